"""What a check reports: one frozen result per component it looked at."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(enum.IntEnum):
    """Ordered by severity so that max() over results gives the worst."""

    SKIP = 0
    PASS = 1
    WARN = 2
    ERROR = 3
    FAIL = 4


# How bad a failure is, most severe first: critical = the node must not run jobs;
# high = jobs will likely fail; medium = jobs run degraded (slow links, throttling);
# low = worth a look.
SEVERITIES = ("critical", "high", "medium", "low")
# What to do about it. The reason and `nodecheck report` carry one of these.
REMEDIES = {
    "reset-gpu": "reset the GPU (nvidia-smi -r) or reboot, then let nodecheck resume it",
    "reboot": "reboot the node",
    "replace": "hardware replacement / RMA of the part",
    "check-cable": "reseat or replace the cable/transceiver, check the switch port",
    "cleanup": "clean up what a job left (processes, files, memory), then resume",
    "restart-service": "restart the daemon and find out why it died",
    "admin": "an admin has to look",
    # A degradation trend (checks/trend/): drained after its jobs; with resume_via =
    # "validation" the quarantine loop's deep tier decides whether it comes back.
    "validate": "validate the node (deep tier) before it takes jobs again",
}


# A result's values key: the signals (a check's declared `new_signals`) a FAIL rests on;
# run/report_only.py turns it into a WARN while they are report-only on this node.
SIGNALS_KEY = "signals"


@dataclass(frozen=True)
class CheckResult:
    """One finding of one check about one component."""

    check_id: str
    status: Status
    message: str
    component: str = "node"
    values: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    # For FAIL/WARN: how bad and what to do. Empty means the check's declared default.
    severity: str = ""
    remedy: str = ""
    # An ERROR of nodecheck's own (nodecheck.checks.boundary): where it was raised, for the
    # log; never shown in a drain reason.
    traceback: str = ""

    def __post_init__(self) -> None:
        # Refused here, where the check made it, not later as a NOT NULL failure while the
        # run's history is written.
        if not isinstance(self.component, str) or not self.component:
            raise TypeError(
                f"{self.check_id}: component must be a non-empty str, not {self.component!r}"
            )

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check_id,
            "status": self.status.name,
            "component": self.component,
            "message": self.message,
            "values": self.values,
            "duration_s": round(self.duration_s, 4),
            **({"severity": self.severity, "remedy": self.remedy} if self.severity else {}),
            **({"traceback": self.traceback} if self.traceback else {}),
        }


def worst(results: list[CheckResult]) -> Status:
    return max((r.status for r in results), default=Status.PASS)


def severity_rank(result: CheckResult) -> int:
    """0 for critical ... 3 for low; unknown severities sort last."""
    return SEVERITIES.index(result.severity) if result.severity in SEVERITIES else len(SEVERITIES)
