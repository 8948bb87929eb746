"""Error counter windows: compare this reading with an earlier one, say how each moved.

Pure functions (no I/O) so the window logic is tested on its own. The check
`nodecheck.checks.fabric.counters` reads the counters, loads the earlier readings from the
node's state store, calls `compare_port` per port, judges the rises against its thresholds
and stores the new reading. Nothing here decides a verdict: a probe reports what it read.

A *window* is the span between two readings of the same port:
- the job window: epilog vs the prolog reading of the same job (the most useful one:
  "link_downed +3 during job 812");
- the run window: any phase vs the last reading of any run, if that reading is recent
  (older readings are only a new baseline: a week-old window says little about now).

A counter that went down (driver reload, reboot, someone ran `perfquery -R`) starts a new
baseline for that counter instead of a rise. PMA error counters saturate at their maximum
rather than wrap; a saturated counter can no longer show new errors, so it is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodecheck.probes.fabric.sysfs import ReadFailure

# The IBA PortCounters error counters the kernel exposes under ports/N/counters, with the
# value at which each saturates (field widths per drivers/infiniband/core/sysfs.c).
SATURATION = {
    "symbol_error": 0xFFFF,
    "link_error_recovery": 0xFF,
    "link_downed": 0xFF,
    "port_rcv_errors": 0xFFFF,
    "port_rcv_remote_physical_errors": 0xFFFF,
    "port_rcv_switch_relay_errors": 0xFFFF,
    "port_xmit_discards": 0xFFFF,
    "port_xmit_constraint_errors": 0xFF,
    "port_rcv_constraint_errors": 0xFF,
    "local_link_integrity_errors": 0xF,
    "excessive_buffer_overrun_errors": 0xF,
    "VL15_dropped": 0xFFFF,
}

DEFAULT_COUNTERS = [
    "symbol_error",
    "link_error_recovery",
    "link_downed",
    "port_rcv_errors",
    "port_rcv_remote_physical_errors",
    "port_xmit_discards",
    "local_link_integrity_errors",
    "excessive_buffer_overrun_errors",
]
# mlx5 hw_counters (64-bit, driver/firmware maintained); read where present.
DEFAULT_HW_COUNTERS = ["rx_icrc_encapsulated", "local_ack_timeout_err", "out_of_buffer"]


@dataclass(frozen=True)
class PortWindow:
    """One port's counters against an earlier reading: what was read and how it moved.

    Lists and dicts keep the order the counters were read in (messages name them in it)."""

    rises: dict[str, int]  # counter -> rise within the window (0 included), never negative
    reset: list[str]  # went down since the earlier reading: a new baseline
    new_baseline: list[str]  # no earlier reading of this counter
    saturated: list[str]  # at its maximum: new errors no longer show
    unreadable: dict[str, ReadFailure]  # the read failed (not: absent, no PMA)
    unparsable: dict[str, str]  # read, but not a number we understand
    absent: list[str]  # the device has no such file
    unavailable: dict[str, ReadFailure]  # the device has no PMA
    stored: dict[str, int]  # what to keep as the new reading
    none_present: bool  # counters were asked for and the device has none of them


def compare_port(
    current: dict[str, int | ReadFailure | str], previous: dict[str, int] | None
) -> PortWindow:
    """Compare one port's counters with an earlier reading (None: no window, baseline).

    Unreadable and unparsable counters keep their previous value in `stored`, so one failed
    read does not lose the baseline."""
    from nodecheck.probes.fabric.sysfs import ReadFailure  # loaded where the probe runs

    previous = previous or {}
    rises: dict[str, int] = {}
    reset: list[str] = []
    new_baseline: list[str] = []
    saturated: list[str] = []
    unreadable: dict[str, ReadFailure] = {}
    unparsable: dict[str, str] = {}
    absent: list[str] = []
    unavailable: dict[str, ReadFailure] = {}
    stored: dict[str, int] = {}
    for name, value in current.items():
        if isinstance(value, ReadFailure):
            if value.missing:
                absent.append(name)
                continue
            if value.unavailable:
                unavailable[name] = value
                continue
            unreadable[name] = value
            if name in previous:
                stored[name] = previous[name]
            continue
        if isinstance(value, str):
            unparsable[name] = value
            if name in previous:
                stored[name] = previous[name]
            continue
        stored[name] = value
        if SATURATION.get(name) == value:
            saturated.append(name)
        if name not in previous:
            new_baseline.append(name)
            continue
        rise = value - previous[name]
        if rise < 0:
            reset.append(name)
            continue
        rises[name] = rise
    return PortWindow(
        rises=rises,
        reset=reset,
        new_baseline=new_baseline,
        saturated=saturated,
        unreadable=unreadable,
        unparsable=unparsable,
        absent=absent,
        unavailable=unavailable,
        stored=stored,
        none_present=bool(current) and len(absent) + len(unavailable) == len(current),
    )
