"""Error counter windows: compare this reading with an earlier one, judge the rise.

Pure functions (no I/O) so the window logic is tested on its own. The check in
`nodecheck.checks.fabric` reads the counters, loads the earlier readings from the node's
state store, calls `judge_port` per port and stores the new reading.

A *window* is the span between two readings of the same port:
- the job window: epilog vs the prolog reading of the same job (the most useful one:
  "link_downed +3 during job 812");
- the run window: any phase vs the last reading of any run, if that reading is recent
  (older readings are only a new baseline: a week-old window says little about now).

A counter that went down (driver reload, reboot, someone ran `perfquery -R`) starts a new
baseline for that counter instead of raising an alarm. PMA error counters saturate at their
maximum rather than wrap; a saturated counter can no longer show new errors, which is a WARN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nodecheck.core.results import Status

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

# A rise strictly greater than the threshold within one window gives the verdict.
# Counters not named in a table are recorded (values) but never judged on that level.
DEFAULT_FAIL_RISE = {
    "symbol_error": 100,
    "link_error_recovery": 10,
    "link_downed": 2,
    "port_rcv_errors": 100,
    "local_link_integrity_errors": 5,
    "excessive_buffer_overrun_errors": 5,
    "rx_icrc_encapsulated": 100,
}
DEFAULT_WARN_RISE = {
    "symbol_error": 10,
    "link_error_recovery": 0,
    "link_downed": 0,
    "port_rcv_errors": 10,
    "port_rcv_remote_physical_errors": 100,
    "port_xmit_discards": 1000,
    "local_link_integrity_errors": 0,
    "excessive_buffer_overrun_errors": 0,
    "rx_icrc_encapsulated": 10,
    "local_ack_timeout_err": 1000,
}


@dataclass
class PortJudgement:
    """One port's counters judged against an earlier reading (filled in as it goes)."""

    status: Status = Status.PASS
    flagged: list[tuple[Status, str, int]] = field(default_factory=list)  # (verdict, name, rise)
    deltas: dict[str, int] = field(default_factory=dict)
    reset: list[str] = field(default_factory=list)
    new_baseline: list[str] = field(default_factory=list)
    saturated: list[str] = field(default_factory=list)
    unreadable: dict[str, ReadFailure] = field(default_factory=dict)
    unparsable: dict[str, str] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    unavailable: dict[str, ReadFailure] = field(default_factory=dict)  # the device has no PMA
    stored: dict[str, int] = field(default_factory=dict)  # what to keep as the new reading

    def raise_to(self, status: Status) -> None:
        self.status = max(self.status, status)


def judge_port(
    current: dict[str, int | ReadFailure | str],
    previous: dict[str, int] | None,
    fail_rise: dict[str, int],
    warn_rise: dict[str, int],
) -> PortJudgement:
    """Judge one port's counters against an earlier reading (None: no window, baseline).

    Unreadable counters keep their previous value in `stored`, so one failed read does not
    lose the baseline. Access errors (EACCES/EPERM) become ERROR, other read errors FAIL,
    values that do not parse ERROR (a format we do not understand is our problem). Counters
    the device does not have (absent, or no PMA) are no verdict; when that is all of them,
    the port is SKIP: nothing to judge, on every run, and no fault of the node.
    """
    from nodecheck.probes.fabric.sysfs import ReadFailure  # loaded where the probe runs

    out = PortJudgement()
    previous = previous or {}
    for name, value in current.items():
        if isinstance(value, ReadFailure):
            if value.missing:
                out.absent.append(name)
                continue
            if value.unavailable:
                out.unavailable[name] = value
                continue
            out.unreadable[name] = value
            out.raise_to(Status.ERROR if value.access else Status.FAIL)
            if name in previous:
                out.stored[name] = previous[name]
            continue
        if isinstance(value, str):
            out.unparsable[name] = value
            out.raise_to(Status.ERROR)
            if name in previous:
                out.stored[name] = previous[name]
            continue
        out.stored[name] = value
        if SATURATION.get(name) == value:
            out.saturated.append(name)
            out.raise_to(Status.WARN)
        if name not in previous:
            out.new_baseline.append(name)
            continue
        rise = value - previous[name]
        if rise < 0:
            out.reset.append(name)
            continue
        out.deltas[name] = rise
        if name in fail_rise and rise > fail_rise[name]:
            out.flagged.append((Status.FAIL, name, rise))
            out.raise_to(Status.FAIL)
        elif name in warn_rise and rise > warn_rise[name]:
            out.flagged.append((Status.WARN, name, rise))
            out.raise_to(Status.WARN)
    out.flagged.sort(key=lambda item: (-item[0], -item[2], item[1]))
    if current and len(out.absent) + len(out.unavailable) == len(current):
        out.status = Status.SKIP
    return out


def describe_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
