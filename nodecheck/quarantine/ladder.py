"""What to do after one validation, from the node's own history: a pure function.

The ladder is the site's list of steps, in order, e.g. ("drain", "reboot", "replace"):
the first failure since the node last passed takes the first step, the next failure the
next one, and the last step repeats. "drain" waits for a human's repair; "reboot" asks
Slurm to reboot the node and validate it again; "replace" holds it drained for a
replacement and alerts. A pass ends the episode and resolves any alert.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from nodecheck.run.reason import format_reason
from nodecheck.run.results import CheckResult, Status

LADDER_STEPS = ("drain", "reboot", "replace")
DEFAULT_LADDER = LADDER_STEPS


class Step(enum.Enum):
    RETURN = "return"  # passed: out of the reservation, back to service
    DRAIN = "drain"  # failed: drained with the deep check's figure, for a repair
    REBOOT = "reboot"  # failed again after a repair: reboot through Slurm, validate again
    REPLACE = "replace"  # still failing after the reboot: held for replacement, alert


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
    failures = [r for r in results if r.status in (Status.FAIL, Status.ERROR)]
    if not failures:
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
