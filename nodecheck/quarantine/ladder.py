"""What to do after one validation, from the node's own history: a pure function.

The ladder is the site's list of steps, in order, e.g. ("drain", "reboot", "replace"):
the first failure since the node last passed takes the first step, the next failure the
next one, and the last step repeats. "drain" waits for a human's repair; "reboot" asks
Slurm to reboot the node and validate it again; "replace" holds it drained for a
replacement and alerts. A pass ends the episode and resolves any alert.

Only a FAIL (what the node said) is a failure here. A check nodecheck could not run (an
ERROR: PyTorch missing where the deep tier needs it, a bug) proves nothing about the node:
the validation is "not validated", no rung is climbed and nothing is drained.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from nodecheck.core.reason import format_reason
from nodecheck.core.results import CheckResult, Status
from nodecheck.run.config_schema import LADDER_STEPS

DEFAULT_LADDER = LADDER_STEPS


class Step(enum.Enum):
    RETURN = "return"  # passed: out of the reservation, back to service
    DRAIN = "drain"  # failed: drained with the deep check's figure, for a repair
    REBOOT = "reboot"  # failed again after a repair: reboot through Slurm, validate again
    REPLACE = "replace"  # still failing after the reboot: held for replacement, alert
    # nodecheck could not validate the node (a check's ERROR: a missing extra such as
    # PyTorch, a tool, a bug; or no check measured anything): its problem, not the node's.
    # No drain, no rung climbed; the loop leaves the node as it found it and says why.
    NOT_VALIDATED = "not validated"


@dataclass(frozen=True)
class ValidationHistory:
    """The node's record since it last passed validation (from its history)."""

    failures_since_pass: int  # validations failed since the last pass, this one not counted
    rebooted_since_pass: bool


@dataclass(frozen=True)
class Decision:
    """The step to take, the drain reason that goes with it, and whether to alert."""

    step: Step
    reason: str | None
    alert: bool
    summary: str


def decide_after_validation(
    results: list[CheckResult],
    past: ValidationHistory,
    ladder: tuple[str, ...],
    job_id: str | None,
) -> Decision:
    failures = [r for r in results if r.status is Status.FAIL]
    if not failures:
        unvalidated = _not_validated(results)
        if unvalidated:
            return Decision(Step.NOT_VALIDATED, None, False, f"not validated: {unvalidated}")
        return Decision(Step.RETURN, None, False, "validation passed")
    if not ladder:
        ladder = ("drain",)
    rung = min(past.failures_since_pass, len(ladder) - 1)
    step_name = ladder[rung]
    # A reboot is taken once per episode: failing again after it climbs to the next step.
    if step_name == "reboot" and past.rebooted_since_pass:
        step_name = ladder[min(rung + 1, len(ladder) - 1)]
    step = Step(step_name)
    if step is not Step.DRAIN:  # the reason's act= says what the ladder did, not the check
        failures = [replace(r, remedy=step.value) for r in failures]
    reason = format_reason(failures, "validate", job_id)
    n = past.failures_since_pass + 1
    summary = f"validation failed ({n} since the last pass): {step.value}"
    return Decision(step, reason, step is Step.REPLACE, summary)


def _not_validated(results: list[CheckResult]) -> str:
    """Why these results prove nothing about the node ("" when they do): a check nodecheck
    could not run (ERROR: only what the node said may drain it, never our own failure).
    A SKIP (nothing to check there, a tool not installed) is no verdict either way, as in
    every phase."""
    errors = [r for r in results if r.status is Status.ERROR]
    if not errors:
        return ""
    first = errors[0]
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{first.check_id} {first.component}: {first.message}{more}"
