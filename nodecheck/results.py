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


@dataclass(frozen=True)
class CheckResult:
    check_id: str
    status: Status
    message: str
    component: str = "node"
    values: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check_id,
            "status": self.status.name,
            "component": self.component,
            "message": self.message,
            "values": self.values,
            "duration_s": round(self.duration_s, 4),
        }


def worst(results: list[CheckResult]) -> Status:
    return max((r.status for r in results), default=Status.PASS)
