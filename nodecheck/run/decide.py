"""From check results to a verdict: what to do about the node and what exit code to give.

Pure functions, no I/O. The contracts (DESIGN.md): FAIL drains; WARN only logs;
ERROR (nodecheck's own failure) follows on_internal_error; a manual run never acts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from nodecheck.run.reason import format_reason
from nodecheck.run.results import CheckResult, Status, worst

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_INTERNAL = 2  # manual runs only: hooks never exit non-zero for our own bugs by default

HOOK_PHASES = ("prolog", "epilog", "health")


class Action(enum.Enum):
    NONE = "none"
    DRAIN = "drain"
    # The node passed: resume it if (and only if) nodecheck drained it. Acted on in health mode.
    CLEAR = "clear"


@dataclass(frozen=True)
class Verdict:
    """The run's outcome: status, Slurm action, exit code and drain reason."""

    status: Status
    action: Action
    exit_code: int
    reason: str | None
    failures: tuple[CheckResult, ...]
    errors: tuple[CheckResult, ...]
    warnings: tuple[CheckResult, ...]
    summary: str


def decide(
    results: list[CheckResult],
    phase: str,
    job_id: str | None,
    on_internal_error: str,
    in_job_scope: Callable[[CheckResult], bool] | None = None,
) -> Verdict:
    """`in_job_scope` (job_scoped = true): failures outside the job's GPUs/HCAs still drain
    the node, but let this job run (exit 0): Slurm keeps the node DRAINING until it ends."""
    failures = tuple(r for r in results if r.status is Status.FAIL)
    errors = tuple(r for r in results if r.status is Status.ERROR)
    warnings = tuple(r for r in results if r.status is Status.WARN)
    acting = phase in HOOK_PHASES

    def verdict(action: Action, exit_code: int, reason: str | None, summary: str) -> Verdict:
        if not acting:
            action = Action.NONE
        return Verdict(
            worst(results), action, exit_code, reason, failures, errors, warnings, summary
        )

    if failures:
        reason = format_reason(list(failures) + list(errors), phase, job_id)
        if in_job_scope is not None and not any(in_job_scope(r) for r in failures):
            return verdict(
                Action.DRAIN,
                EXIT_OK,
                reason,
                f"{len(failures)} check(s) failed outside this job's GPUs/HCAs: "
                "drain once the job ends",
            )
        return verdict(Action.DRAIN, EXIT_FAIL, reason, f"{len(failures)} check(s) failed")
    if errors and on_internal_error == "drain":
        reason = format_reason(list(errors), phase, job_id)
        return verdict(
            Action.DRAIN,
            EXIT_FAIL,
            reason,
            f"{len(errors)} internal error(s); on_internal_error=drain",
        )
    if errors:
        code = EXIT_OK if acting else EXIT_INTERNAL
        return verdict(
            Action.NONE,
            code,
            None,
            f"{len(errors)} internal error(s) ignored (on_internal_error=pass)",
        )
    summary = f"healthy ({len(warnings)} warning(s))" if warnings else "healthy"
    return verdict(Action.CLEAR, EXIT_OK, None, summary)


def internal_error_verdict(
    message: str, phase: str, job_id: str | None, on_internal_error: str
) -> Verdict:
    """A run that could not even start its checks (bad config, missing library)."""
    error = CheckResult("nodecheck.internal", Status.ERROR, message)
    return decide([error], phase, job_id, on_internal_error)
