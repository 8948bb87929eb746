"""An alert when the circuit breaker starts holding a failing node back (issue 18): the node
runs jobs although a check fails, so a human should know. Sent once per hold (when it
starts), to the same Alertmanager as the quarantine loop's alerts (`alert_url`), within
what is left of the run's budget; a failure to deliver is logged and changes nothing."""

from __future__ import annotations

import time

from nodecheck.core.plan import Plan
from nodecheck.core.reason import parse_reason
from nodecheck.log import get_logger
from nodecheck.notify.alertmanager import Alert, AlertError, send

ACTION = "breaker-held"
_MIN_S = 0.5  # no alert with less budget than this left


def alert_hold_starts(url: str, node: str, plan: Plan, deadline: float) -> bool:
    """POST the alert; True when Alertmanager took it."""
    room = min(5.0, deadline - time.monotonic() - 0.2)
    if not url or room < _MIN_S:
        return False
    parsed = parse_reason(plan.reason or "")
    alert = Alert(
        node=node,
        check=parsed.check_id if parsed else "unknown",
        severity=(parsed.severity if parsed else "") or "critical",
        action=ACTION,
        summary=f"circuit breaker open ({plan.why}); not drained, jobs run: {plan.reason}",
    )
    try:
        send(url, alert, timeout_s=room)
    except AlertError as exc:
        get_logger().error("alert_not_sent", error=str(exc))
        return False
    return True
