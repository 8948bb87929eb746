"""The clocks a run reads, each only for what it is a fact about.

- The node's wall clock (time.time()) is what the node believes the date is. NTP steps it,
  an admin sets it, a node with a flat RTC battery boots an hour or a year off. It is kept
  for people (log lines, the report) and as a last resort, never to measure how long ago
  something happened on this node.
- The boot-relative clock (CLOCK_BOOTTIME: seconds since this boot, suspend included,
  never stepped), with the boot id that says which boot it counts from, measures that:
  how long ago nodecheck drained, failed, or recorded a pass. A figure from another boot
  means nothing on its own; such an event is at least as old as the current boot.
- Slurm's clock (slurmctld's) is the fact about Slurm's own records: a reason's time is
  compared with the controller's "now" (SlurmView.controller_now), never with the node's.

Every read of the node's clocks goes through `now()`, the one function tests drive.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class Stamp:
    """One moment on this node: its wall time, and where it lies on this boot's clock."""

    wall: float  # time.time()
    boot_id: str = ""  # "" when unknown (a record from before stamps were kept)
    since_boot: float = -1.0  # CLOCK_BOOTTIME; < 0 when unknown

    def as_json(self) -> dict[str, Any]:
        return {"boot_id": self.boot_id, "since_boot": self.since_boot}

    @classmethod
    def from_json(cls, wall: float, data: Any) -> Stamp:
        """The stamp kept beside a record's `at` (its wall time); what is missing or not of
        the right type reads as unknown."""
        if not isinstance(data, dict):
            return cls(wall)
        boot = data.get("boot_id")
        since = data.get("since_boot")
        known = isinstance(since, int | float) and not isinstance(since, bool)
        return cls(wall, boot if isinstance(boot, str) else "", float(since) if known else -1.0)


@functools.cache
def boot_id() -> str:
    """This boot's id (changes at every boot); "" where the kernel does not say."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def now() -> Stamp:
    """The node's clocks now."""
    return Stamp(time.time(), boot_id(), time.clock_gettime(time.CLOCK_BOOTTIME))


def elapsed_s(then: Stamp, at: Stamp) -> float:
    """How long before `at` the moment `then` was. Within one boot the boot clock says,
    whatever the wall clock did meanwhile. Across a reboot only the wall clock is left,
    but the moment is at least as old as the current boot. Without stamps (old records)
    the wall clock is all there is."""
    if then.boot_id and then.boot_id == at.boot_id and min(then.since_boot, at.since_boot) >= 0:
        return at.since_boot - then.since_boot
    wall = at.wall - then.wall
    if then.boot_id and at.boot_id and at.since_boot >= 0:  # another boot than this one
        return max(wall, at.since_boot)
    return wall


def controller_elapsed_s(slurm_time: float, controller_now: float) -> float:
    """How long ago a time of Slurm's (a reason's time) was, by Slurm's own clock."""
    return controller_now - slurm_time
