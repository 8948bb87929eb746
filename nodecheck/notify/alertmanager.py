"""Alerts in Alertmanager's API v2 shape (POST /api/v2/alerts), with the standard library.

An alert is identified by its labels: the same labels with `endsAt` in the past resolve
it. Labels: alertname, node, check, severity, action; the drain reason is the summary.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime

ALERT_NAME = "NodecheckNodeQuarantined"


class AlertError(RuntimeError):
    """The alert could not be delivered (the caller logs it; it never blocks a decision)."""


@dataclass(frozen=True)
class Alert:
    """One node's alert: who, which check, how bad, what to do, and why."""

    node: str
    check: str
    severity: str
    action: str
    summary: str

    def labels(self) -> dict[str, str]:
        return {
            "alertname": ALERT_NAME,
            "node": self.node,
            "check": self.check,
            "severity": self.severity or "critical",
            "action": self.action,
        }


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def payload(alert: Alert, now: datetime, resolved: bool = False) -> list[dict]:
    """The JSON body: firing from now on, or (resolved) ended now."""
    body: dict = {
        "labels": alert.labels(),
        "annotations": {"summary": alert.summary, "source": "nodecheck quarantine loop"},
        "startsAt": _iso(now),
    }
    if resolved:
        body["endsAt"] = _iso(now)
    return [body]


def send(url: str, alert: Alert, resolved: bool = False, timeout_s: float = 5.0) -> None:
    """POST the alert to `url` (an Alertmanager's base URL, e.g. http://am:9093)."""
    if not url.startswith(("http://", "https://")):
        raise AlertError(f"alert_url must be http(s)://, not {url!r}")
    data = json.dumps(payload(alert, datetime.now(UTC), resolved)).encode()
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url.rstrip("/") + "/api/v2/alerts",
        data=data,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            if response.status >= 300:
                raise AlertError(f"Alertmanager answered {response.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise AlertError(f"alert to {url} not delivered: {exc}") from exc
