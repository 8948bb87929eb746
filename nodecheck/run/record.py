"""Record: what a run leaves behind, after it has acted. The run's history row, the drain
marker (the exact reason nodecheck set), drain/resume/flap/breaker events, the breaker hold,
a pending failure for Slurm's own drain to be adopted later, the metrics file, and the log
lines that say what was decided and done. One short write transaction; never fails the run.
"""

from __future__ import annotations

from collections.abc import Callable

from nodecheck.log import get_logger
from nodecheck.run.decide import AWAITING, Action, Verdict, pending_is_live
from nodecheck.run.plan import Acted, HeldBack, Marker, PendingFailure, Plan, Situation, Step
from nodecheck.store import history


def state_changes(
    verdict: Verdict, plan: Plan, acted: Acted, situation: Situation
) -> Callable[[history.History], None] | None:
    """The state writes this run owes, as one function run inside the run's transaction;
    None when there are none (the healthy prolog/epilog)."""
    now = situation.now
    window = situation.history
    writes: list[Callable[[history.History], None]] = []

    def put(key: str, value: object) -> None:
        writes.append(lambda h: h.put(key, value))

    def event(kind: str, text: str) -> None:
        writes.append(lambda h: h.add_event(kind, text, now))

    step = plan.step
    if acted.failed and step is Step.DRAIN and verdict.exit_code != 0:
        # The controller did not answer and the hook exits non-zero: Slurm will drain the
        # node with its own "Prolog error" once it can; a later run adopts that drain.
        put(history.PENDING_FAILURE, _pending(plan, situation, now))
    elif step is Step.FAILED and verdict.action is Action.DRAIN and verdict.exit_code != 0:
        put(history.PENDING_FAILURE, _pending(plan, situation, now))
    elif step is Step.DRAIN and not acted.failed and acted.backed_off is None:
        assert plan.reason is not None
        checks = tuple(dict.fromkeys(r.check_id for r in verdict.failures + verdict.errors))
        if not checks and window.pending is not None:  # adopted while passing
            checks = _checks_of(window.pending.reason)
        put(history.DRAIN_MARKER, Marker(plan.reason, now, plan.flapping, checks).as_json())
        if plan.new_episode:
            event("drain", plan.reason)
        if plan.flap_hold_starts:
            event("flap_hold", plan.reason)
        if window.pending is not None:  # adopted, or drained by us after all
            put(history.PENDING_FAILURE, None)
        if window.held_back is not None:
            put(history.BREAKER_HOLD, None)
    elif step is Step.KEEP:
        if window.marker is None and plan.reason is not None:
            checks = tuple(dict.fromkeys(r.check_id for r in verdict.failures))
            put(history.DRAIN_MARKER, Marker(plan.reason, now, plan.flapping, checks).as_json())
        if window.held_back is not None:
            put(history.BREAKER_HOLD, None)
    elif step is Step.RESUME and not acted.failed:
        put(history.DRAIN_MARKER, None)
        event("resume", plan.reason or "")
    elif step is Step.FORGET:
        put(history.DRAIN_MARKER, None)
    if step is Step.BREAKER_HELD or acted.backed_off is not None:
        held = HeldBack(plan.held_since or now, verdict.reason or "", _breaker_why(plan, acted))
        put(history.BREAKER_HOLD, held.as_json())
        event("breaker_open", f"{held.why}; would drain: {held.reason}")
    if situation.phase == "health" and verdict.action is Action.CLEAR:
        if window.held_back is not None:
            # The failure the breaker held back has gone: nothing is left to drain.
            put(history.BREAKER_HOLD, None)
        if window.pending is not None and not pending_is_live(window.pending, now):
            put(history.PENDING_FAILURE, None)  # Slurm never drained for it: forget it
    if not writes:
        return None

    def apply(h: history.History) -> None:
        for write in writes:
            write(h)

    return apply


def _pending(plan: Plan, situation: Situation, now: float) -> dict[str, object]:
    return PendingFailure(plan.reason or "", now, situation.phase, situation.job_id).as_json()


def _checks_of(reason: str) -> tuple[str, ...]:
    from nodecheck.run.reason import parse_reason

    parsed = parse_reason(reason)
    return (parsed.check_id,) if parsed else ()


def _breaker_why(plan: Plan, acted: Acted) -> str:
    state = acted.backed_off or plan.breaker
    return state.why if state is not None else plan.why


def log_outcome(plan: Plan, acted: Acted, situation: Situation, verdict: Verdict) -> None:
    """The log lines that say what was decided and done (the verdict line comes after)."""
    log = get_logger()
    step = plan.step
    breaker = acted.backed_off or plan.breaker
    if step is Step.BREAKER_HELD or acted.backed_off is not None:
        held = situation.history.held_back
        log.error(
            "circuit_breaker_open",
            why=breaker.why if breaker else plan.why,
            would_drain=verdict.reason,
            partition=breaker.partition if breaker else "",
            drained=breaker.drained if breaker else 0,
            total=breaker.total if breaker else 0,
            held_since=held.since if held else situation.now,
            breaker_open_action="run" if plan.exit_code == 0 else "fail",
            what_now=(
                "nodecheck does not drain; the job runs; the node is held back until the "
                "breaker closes"
                if plan.exit_code == 0
                else "nodecheck does not drain; Slurm drains on the non-zero exit"
            ),
        )
    elif acted.failed:
        return
    elif step is Step.ADMIN_KEPT:
        log.warning("admin_drain_kept", existing_reason=plan.why)
    elif step in (Step.DRAIN, Step.KEEP):
        if plan.adopted:
            log.warning("slurm_drain_adopted", slurm_reason=plan.adopted, reason=plan.reason)
        log.warning("drain", result=acted.action, reason=plan.reason, new_episode=plan.new_episode)
    elif step is Step.HOLD and plan.why == AWAITING:
        log.warning("awaiting_validation", reason=plan.reason, then="nodecheck validate --pending")
    elif step is Step.HOLD:
        event = "flap_hold" if plan.why == "flapping" else "manual_resume_hold"
        log.warning(event, reason=plan.reason)
    elif step is Step.WAIT:
        log.info("resume_pending", passes=int(plan.why), action=plan.action)
    elif step in (Step.RESUME, Step.FORGET):
        log.warning("resume", result=acted.action, drained_for=plan.reason, passes=int(plan.why))
    elif step is Step.FAILED and plan.action == "state unusable":
        log.error("state_unusable", error=plan.why)
    elif step is Step.FAILED:  # the controller could not even be read within the budget
        log.error("slurm_action_failed", action=plan.action.split()[0], error=plan.why)


def record(
    config: object,
    node: str,
    rec: history.RunRecord,
    changes: Callable[[history.History], None] | None,
) -> None:
    """The run's history row, the state changes and the metrics file, in one transaction."""
    try:
        history.record_run(config, node, rec, changes)
    except Exception as exc:
        get_logger().warning("history_not_saved", error=f"{type(exc).__name__}: {exc}")
        if changes is not None:
            get_logger().error("drain_marker_not_saved", error=f"{type(exc).__name__}: {exc}")
