"""The decision, in two pure steps: check results -> a verdict (status, exit code, reason);
then the verdict and what gather found (history window, controller state, breaker snapshot)
-> a plan (nothing / drain / keep / resume / hold / wait / would-drain / breaker-held).

No I/O here. The contracts (DESIGN.md): FAIL drains; WARN only logs; ERROR (nodecheck's own
failure) follows on_internal_error; a manual run never acts; a drain is ours when its reason
is exactly the one nodecheck set; the circuit breaker, when open, stops every drain.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodecheck.core import clock
from nodecheck.core.clock import Stamp
from nodecheck.core.codes import EXIT_FAIL, EXIT_INTERNAL, EXIT_OK, HOOK_PHASES
from nodecheck.core.node import drain_owner
from nodecheck.core.plan import (
    HistoryWindow,
    Marker,
    PendingFailure,
    Plan,
    Situation,
    SlurmView,
    Step,
)
from nodecheck.core.reason import (
    flapping_prefix,
    flapping_reason,
    format_reason,
    is_flapping_message,
    parse_reason,
    with_held_since,
)
from nodecheck.core.results import CheckResult, Status, worst

if TYPE_CHECKING:  # the breaker (and nodecheck.slurm) load only on the unhealthy path
    from nodecheck.core.node import NodeInfo
    from nodecheck.core.plan import BreakerState
    from nodecheck.run.breaker import BreakerLimits


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
        # nodecheck's own errors are never part of the reason: it names what the node said
        reason = format_reason(list(failures), phase, job_id)
        failed = len({r.check_id for r in failures})  # checks, not components
        if in_job_scope is not None and not any(in_job_scope(r) for r in failures):
            return verdict(
                Action.DRAIN,
                EXIT_OK,
                reason,
                f"{failed} check(s) failed outside this job's GPUs/HCAs: drain once the job ends",
            )
        return verdict(Action.DRAIN, EXIT_FAIL, reason, f"{failed} check(s) failed")
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


# -- the plan: what to do about the node, from everything gathered -----------------------

BREAKER_OPEN_ACTIONS = ("run", "fail")
# A Slurm hook-failure drain that starts within this long of nodecheck's own recorded failure
# is that failure's drain (Slurm sets it when the controller comes back, which may be late).
ADOPT_WINDOW_S = 6 * 3600.0
ADOPT_SLACK_S = 5.0  # Slurm prints reason times in whole seconds
SLURM_HOOK_FAILURE = {"prolog": "Prolog error", "epilog": "Epilog error"}
# resume_via = "validation": a passing node that nodecheck drained waits for the quarantine
# loop (`nodecheck validate --pending`) instead of being resumed by health.
AWAITING = "awaiting validation"
# validate_new_nodes: the drain of a node that never passed validation; the "check" is the
# quarantine loop's, and only a validation job ends it.
NEW_NODE = CheckResult(
    "validate.new",
    Status.FAIL,
    "never validated: waits for nodecheck validate --pending",
    "node",
    remedy="validate",
)


@dataclass(frozen=True)
class PlanSettings:
    """The settings the plan depends on, taken from the config once."""

    resume_after_passes: int = 1
    flap_max_drains: int = 3
    flap_window_s: float = 86400.0
    manual_resume_checks: tuple[str, ...] = ("gpu.xid", "fabric.preflight")
    breaker_max_share: float = 0.10
    breaker_floor: int = 3
    breaker_max_drains: int = 20
    breaker_window_min: float = 10.0
    breaker_jitter_s: float = 2.0
    breaker_open_action: str = "run"
    resume_via: str = "resume"
    validate_new_nodes: bool = False
    dry_run: bool = False

    @classmethod
    def from_config(cls, config: Any, dry_run: bool = False) -> PlanSettings:
        if config is None:
            return cls(dry_run=dry_run)
        return cls(
            resume_after_passes=int(config.resume_after_passes),
            flap_max_drains=int(config.flap_max_drains),
            flap_window_s=float(config.flap_window_s),
            manual_resume_checks=tuple(config.manual_resume_checks),
            breaker_max_share=float(config.breaker_max_share),
            breaker_floor=int(config.breaker_floor),
            breaker_max_drains=int(config.breaker_max_drains),
            breaker_window_min=float(config.breaker_window_min),
            breaker_jitter_s=float(config.breaker_jitter_s),
            breaker_open_action=str(config.breaker_open_action),
            resume_via=str(config.resume_via),
            validate_new_nodes=bool(config.validate_new_nodes),
            dry_run=dry_run,
        )

    @property
    def breaker_enabled(self) -> bool:
        return self.breaker_max_share > 0 or self.breaker_max_drains > 0


def needs_history(verdict: Verdict, phase: str) -> bool:
    """The history window is read on the unhealthy path and in health, never on a healthy
    prolog/epilog."""
    return verdict.action is Action.DRAIN or (verdict.action is Action.CLEAR and phase == "health")


def needs_slurm(
    verdict: Verdict, phase: str, window: HistoryWindow, settings: PlanSettings, now: Stamp | float
) -> bool:
    """Does the plan depend on what the controller says? Only then is it asked."""
    if verdict.action is Action.DRAIN:
        return not settings.dry_run
    if not (verdict.action is Action.CLEAR and phase == "health"):
        return False
    marker = window.marker
    if marker is None:
        unvalidated = settings.validate_new_nodes and not window.validated and window.readable
        return unvalidated or pending_is_live(window.pending, now)
    passes = window.passes_since_drain + 1
    return hold_reason(marker, settings) is not None or passes >= settings.resume_after_passes


def hold_reason(marker: Marker, settings: PlanSettings) -> str | None:
    """Why a drain must not end by itself: the node flaps, or one of the drain's failures
    (any of them, not only the leading one) is of a check whose fault does not show again
    once it is past (an XID is read once from the kernel log)."""
    if marker.flapping:
        return "flapping"
    checks = marker.checks
    if not checks:  # a marker from before checks were kept: the reason names the first
        parsed = parse_reason(marker.reason)
        checks = (parsed.check_id,) if parsed else ()
    if NEW_NODE.check_id in checks:
        return AWAITING
    manual = [c for c in checks if c in settings.manual_resume_checks]
    if manual:
        return f"{manual[0]} needs a manual resume"
    return None


def plan(verdict: Verdict, situation: Situation, settings: PlanSettings) -> Plan:
    """The decision, pure: from the verdict, what was gathered and the settings to a plan."""
    if verdict.action is Action.DRAIN:
        return _plan_drain(verdict, situation, settings)
    if verdict.action is Action.CLEAR and situation.phase == "health":
        return _plan_clear(situation, settings)
    return Plan(Step.NOTHING, "none", verdict.exit_code)


def pending_is_live(pending: PendingFailure | None, now: Stamp | float) -> bool:
    """A recorded failure whose Slurm drain may still come (and be adopted): no older than
    ADOPT_WINDOW_S by the node's boot clock (nodecheck.core.clock), whatever its wall clock
    did since."""
    if pending is None:
        return False
    at = now if isinstance(now, Stamp) else Stamp(now)
    return clock.elapsed_s(pending.stamp, at) <= ADOPT_WINDOW_S


def _adoption_candidate(info: NodeInfo | None, pending: PendingFailure | None) -> bool:
    """Slurm drained the node for a failed hook of the phase nodecheck recorded a failure
    in: whether it is that failure's drain is for the times to say (_adoptable)."""
    if info is None or pending is None or not info.drained:
        return False
    expected = SLURM_HOOK_FAILURE.get(pending.phase)
    return expected is not None and info.reason.startswith(expected)


def _adoptable(info: NodeInfo, pending: PendingFailure | None, situation: Situation) -> bool:
    """Slurm's own "Prolog error"/"Epilog error" drain that followed nodecheck's recorded
    failure on this node (the controller did not answer when nodecheck tried to drain).

    Each time is compared on its own clock: the failure's age on the node's boot clock,
    the drain's age on Slurm's (its reason time against slurmctld's now). The node's wall
    clock is in neither: 60 s ahead of the controller's, it made the drain look older than
    the failure it followed."""
    if pending is None or not _adoption_candidate(info, pending):
        return False
    from nodecheck.slurm import reason_epoch

    when = reason_epoch(info.reason_time)
    if when is None:
        return False
    failure_age = clock.elapsed_s(pending.stamp, situation.stamp)
    if failure_age > ADOPT_WINDOW_S:
        return False
    controller_now = situation.slurm.controller_now if situation.slurm is not None else None
    if controller_now is None:  # Slurm's clock unknown (a backend that cannot say it)
        now = situation.now
        return pending.at - ADOPT_SLACK_S <= when <= min(now, pending.at + ADOPT_WINDOW_S) + 1
    drain_age = clock.controller_elapsed_s(when, controller_now)
    # The drain came after the failure (no older than it) and not from Slurm's future.
    return -ADOPT_SLACK_S <= drain_age <= failure_age + ADOPT_SLACK_S


def needs_controller_time(
    verdict: Verdict, window: HistoryWindow, view: SlurmView, settings: PlanSettings
) -> bool:
    """Does the plan compare a time of Slurm's, so that slurmctld's own clock must be read
    (one more call where the backend has not seen it already)? Only for an adoption, and
    for the breaker's rate window when other nodes carry nodecheck's drains to count."""
    info = view.node
    if _adoption_candidate(info, window.pending):
        return True
    if verdict.action is not Action.DRAIN or settings.breaker_max_drains <= 0:
        return False
    return any(
        n.drained_by_nodecheck and n.reason_time and (info is None or n.name != info.name)
        for n in view.nodes
    )


def slurm_now(situation: Situation) -> float:
    """The time Slurm's reason times are measured against: slurmctld's clock when it was
    read, else (a backend that cannot tell it) the node's."""
    view = situation.slurm
    if view is not None and view.controller_now is not None:
        return view.controller_now
    return situation.now


def _owns(info: NodeInfo, marker: Marker | None) -> bool:
    """Ours means the exact reason nodecheck set (core/node.py). With no marker (a
    sibling run on this node drained a moment ago, or the state was lost), a reason that is
    whole nodecheck's grammar counts as ours for not draining twice; resuming always needs
    the marker."""
    return drain_owner(info, marker.reason if marker else None).ours


def _plan_drain(verdict: Verdict, situation: Situation, settings: PlanSettings) -> Plan:
    assert verdict.reason is not None
    if settings.dry_run:
        return Plan(Step.WOULD_DRAIN, "would drain", EXIT_OK, verdict.reason)
    view, window = situation.slurm, situation.history
    if view is None or view.node is None:
        why = view.error if view is not None else "controller state not read"
        return Plan(Step.FAILED, "drain failed", verdict.exit_code, verdict.reason, why)
    info = view.node
    ours = _owns(info, window.marker)
    adopt = not ours and _adoptable(info, window.pending, situation)
    if info.drained and not ours and not adopt:
        return Plan(Step.ADMIN_KEPT, "admin drain kept", verdict.exit_code, why=info.reason)
    reason = verdict.reason
    if window.held_back is not None:
        reason = with_held_since(reason, window.held_back.since)
    if settings.breaker_enabled and not ours and not adopt:
        from nodecheck.run.breaker import evaluate

        limits = breaker_limits(settings)
        tripped = evaluate(view.nodes, situation.node, limits, slurm_now(situation))
        if tripped.open:
            return breaker_held(verdict.reason, tripped, situation, settings)
    new_episode = not info.drained or adopt
    held = ours and (
        (window.marker is not None and window.marker.flapping) or _reason_is_flapping(info.reason)
    )
    flapping = False
    if settings.flap_max_drains:
        drains = window.drains_in_window + (1 if new_episode else 0)
        if held or drains > settings.flap_max_drains:
            flapping = True
            reason = flapping_reason(
                reason, flapping_prefix(max(drains, 1), settings.flap_window_s)
            )
    suffix = " (flapping)" if flapping else ""
    common = {
        "exit_code": verdict.exit_code,
        "flapping": flapping,
        "flap_hold_starts": flapping and not held,
        "held_since": window.held_back.since if window.held_back else None,
    }
    if ours and (held or not flapping):
        # Already drained by us (the epilog after a failed prolog, a health run on a node
        # still broken): the first reason stands and the controller is spared a write.
        return Plan(Step.KEEP, "already drained" + suffix, reason=info.reason, **common)
    return Plan(
        Step.DRAIN,
        ("adopted " if adopt else "") + "drained" + suffix,
        reason=reason,
        new_episode=new_episode,
        adopted=info.reason if adopt else "",
        check_wave=settings.breaker_enabled and not ours and not adopt,
        **common,
    )


def breaker_held(
    reason: str, tripped: BreakerState, situation: Situation, settings: PlanSettings
) -> Plan:
    """The breaker is open: no drain by any route. "run" (fail open): exit 0, the job runs;
    "fail": exit non-zero, and Slurm drains the node itself."""
    held = situation.history.held_back
    exit_code = EXIT_OK if settings.breaker_open_action == "run" else EXIT_FAIL
    return Plan(
        Step.BREAKER_HELD,
        "breaker open",
        exit_code,
        reason,
        tripped.why,
        breaker=tripped,
        held_since=held.since if held else situation.now,
    )


def _plan_clear(situation: Situation, settings: PlanSettings) -> Plan:
    """Health phase, node passed: resume what nodecheck drained, after enough passes."""
    window, view = situation.history, situation.slurm
    marker = window.marker
    if not window.readable:
        return Plan(Step.FAILED, "state unusable", EXIT_OK, why=window.error)
    info = view.node if view is not None else None
    if marker is None:
        pending = window.pending
        if info is not None and pending is not None and _adoptable(info, pending, situation):
            # The failure has passed since, but the drain is nodecheck's: give it its real
            # reason, and the usual resume-after-passes brings it back.
            return Plan(
                Step.DRAIN,
                "adopted drain",
                EXIT_OK,
                pending.reason,
                new_episode=True,
                adopted=info.reason,
            )
        if settings.validate_new_nodes and not window.validated and _new_and_open(info):
            reason = format_reason([NEW_NODE], situation.phase, situation.job_id)
            return Plan(Step.DRAIN, "drained: never validated", EXIT_OK, reason, new_episode=True)
        return Plan(Step.NOTHING, "none", EXIT_OK)
    hold = hold_reason(marker, settings)
    passes = window.passes_since_drain + 1
    if hold is None and passes < settings.resume_after_passes:
        needed = settings.resume_after_passes
        return Plan(Step.WAIT, f"passed {passes}/{needed} before resume", EXIT_OK, why=str(passes))
    if info is None:
        why = view.error if view is not None else "controller state not read"
        return Plan(Step.FAILED, "clear failed", EXIT_OK, marker.reason, why)
    ours = _owns(info, marker)
    if hold is not None and ours:
        return Plan(Step.HOLD, f"held: {hold}", EXIT_OK, marker.reason, hold)
    if not info.drained:
        return Plan(Step.FORGET, "not drained", EXIT_OK, marker.reason, str(passes))
    if not ours:
        return Plan(
            Step.FORGET, "refused: drained by someone else", EXIT_OK, marker.reason, str(passes)
        )
    if settings.resume_via == "validation":
        return Plan(Step.HOLD, "held: awaiting validation", EXIT_OK, marker.reason, AWAITING)
    return Plan(Step.RESUME, "resumed", EXIT_OK, marker.reason, str(passes))


def _new_and_open(info: NodeInfo | None) -> bool:
    """A never-validated node that could take a user job: not drained, not already inside a
    (maintenance) reservation, where the quarantine loop is validating it."""
    if info is None or info.drained:
        return False
    return not {"MAINT", "RESERVED"} & set(info.states)


def after_wave(
    plan_: Plan, crowded: BreakerState, situation: Situation, settings: PlanSettings
) -> Plan:
    """A wave of simultaneous drains pushed nodecheck past the limit and act backed off
    (resumed this node): from here on it is a breaker hold like any other."""
    assert plan_.reason is not None
    return breaker_held(plan_.reason, crowded, situation, settings)


def _reason_is_flapping(reason: str) -> bool:
    parsed = parse_reason(reason)
    return parsed is not None and is_flapping_message(parsed.message)


def breaker_limits(settings: PlanSettings) -> BreakerLimits:
    from nodecheck.run.breaker import BreakerLimits

    return BreakerLimits(
        max_share=settings.breaker_max_share,
        floor=settings.breaker_floor,
        max_drains=settings.breaker_max_drains,
        window_min=settings.breaker_window_min,
        jitter_s=settings.breaker_jitter_s,
    )
