"""Record: what a run leaves behind, after it has acted. The run's history row, the drain
marker (the exact reason nodecheck set), drain/resume/flap/breaker events, the breaker hold,
a pending failure for Slurm's own drain to be adopted later, the metrics file, and the log
lines that say what was decided and done. One short write transaction; never fails the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodecheck.checks.registry import all_checks
from nodecheck.core import clock
from nodecheck.core.clock import Stamp
from nodecheck.core.plan import Acted, HeldBack, Marker, PendingFailure, Plan, Situation, Step
from nodecheck.log import get_logger
from nodecheck.run.decide import AWAITING, Action, Verdict, pending_is_live
from nodecheck.store import history, recording, unsaved


@dataclass(frozen=True)
class Write:
    """One state write a run owes: a key of the state set to `value` (None clears it), or a
    lifecycle event. Data, not a function: when the state cannot take it, it is kept aside
    as it is (store/unsaved.py) and applied later."""

    key: str = ""
    value: Any = None
    event: str = ""
    text: str = ""
    at: float = 0.0
    stamp: Stamp | None = None  # where `at` lies on the node's boot clock (core/clock.py)

    def apply(self, h: history.History) -> None:
        if self.event:
            h.add_event(self.event, self.text, self.at, self.stamp)
        elif self.key == history.DRAIN_MARKER and isinstance(self.value, dict):
            # The passes that count towards this drain's resume are the history rows
            # written after it (plan.Marker.after_run), whatever the clock says.
            h.put(self.key, {**self.value, "after_run": h.last_run_id()})
        else:
            h.put(self.key, self.value)

    def as_json(self) -> dict[str, Any]:
        if self.event:
            stamp = self.stamp.as_json() if self.stamp is not None else {}
            return {"event": self.event, "text": self.text, "at": self.at, **stamp}
        return {"key": self.key, "value": self.value}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Write | None:
        if isinstance(data.get("event"), str) and data["event"] in history.EVENT_COUNTERS:
            at = _num(data, "at")
            text = str(data.get("text", ""))
            return cls(event=data["event"], text=text, at=at, stamp=Stamp.from_json(at, data))
        if isinstance(data.get("key"), str) and data["key"] in _KEYS:
            return cls(key=data["key"], value=data.get("value"))
        return None


# The state keys a run writes (and so the only ones an unsaved file may set).
_KEYS = (history.DRAIN_MARKER, history.PENDING_FAILURE, history.BREAKER_HOLD)


def _num(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


@dataclass(frozen=True)
class StateChanges:
    """The writes a run owes, applied in order inside its transaction."""

    writes: tuple[Write, ...]

    def __call__(self, h: history.History) -> None:
        for write in self.writes:
            write.apply(h)


def state_changes(
    verdict: Verdict, plan: Plan, acted: Acted, situation: Situation
) -> StateChanges | None:
    """The state writes this run owes, applied inside the run's transaction; None when
    there are none (the healthy prolog/epilog)."""
    now = situation.now
    window = situation.history
    writes: list[Write] = []

    def put(key: str, value: object) -> None:
        writes.append(Write(key=key, value=value))

    def event(kind: str, text: str) -> None:
        writes.append(Write(event=kind, text=text, at=now, stamp=situation.stamp))

    step = plan.step
    if acted.failed and step is Step.DRAIN and verdict.exit_code != 0:
        # The controller did not answer and the hook exits non-zero: Slurm will drain the
        # node with its own "Prolog error" once it can; a later run adopts that drain.
        put(history.PENDING_FAILURE, _pending(plan, situation, now))
    elif step is Step.FAILED and verdict.action is Action.DRAIN and verdict.exit_code != 0:
        put(history.PENDING_FAILURE, _pending(plan, situation, now))
    elif step is Step.DRAIN and not acted.failed and acted.backed_off is None:
        assert plan.reason is not None
        # What the drain is for: its failures (nodecheck's own errors only when they are
        # the reason, on_internal_error = "drain"). A gpu.xid that could not save its
        # cursor on a full disk must not make a host.mounts drain a manual-resume one.
        checks = tuple(dict.fromkeys(r.check_id for r in verdict.failures or verdict.errors))
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
        if window.pending is not None and not pending_is_live(window.pending, situation.stamp):
            put(history.PENDING_FAILURE, None)  # Slurm never drained for it: forget it
    return StateChanges(tuple(writes)) if writes else None


def _pending(plan: Plan, situation: Situation, now: float) -> dict[str, object]:
    stamp = situation.stamp
    failure = PendingFailure(
        plan.reason or "", now, situation.phase, situation.job_id, stamp.boot_id, stamp.since_boot
    )
    return failure.as_json()


def _checks_of(reason: str) -> tuple[str, ...]:
    from nodecheck.core.reason import parse_reason

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
    config: Any,
    node: str,
    rec: history.RunRecord,
    changes: StateChanges | None,
) -> None:
    """The run's history row, the state changes and the metrics file, in one transaction;
    first what earlier runs could not write (store/unsaved.py). When the state cannot take
    them, the changes are kept aside and every channel says so. Never fails the run."""
    log = get_logger()
    directory = Path(config.values.get("state_fallback_dir") or unsaved.DEFAULT_DIR)
    try:
        earlier = unsaved.load(directory, node, config.state_dir_for(node))
    except OSError as exc:
        log.error("unsaved_state_refused", error=exc.strerror or str(exc))
        earlier = None
    try:
        recording.record_run(config, node, rec, _with_earlier(earlier, changes), all_checks)
    except Exception as exc:
        _not_saved(config, node, directory, earlier, changes, f"{type(exc).__name__}: {exc}")
        return
    if earlier is not None:
        unsaved.remove(directory, node, earlier.id)
        log.warning(
            "state_saved_late",
            since=earlier.since,
            writes=len(earlier.writes),
            kept_in=str(unsaved.path_for(directory, node)),
        )


def _with_earlier(
    earlier: unsaved.Unsaved | None, changes: StateChanges | None
) -> Callable[[history.History], None] | None:
    """Earlier runs' unsaved writes (once: by the file's id), then this run's."""
    if earlier is None:
        return changes
    owed = StateChanges(tuple(w for w in map(Write.from_json, earlier.writes) if w is not None))

    def apply(h: history.History) -> None:
        if h.store.get_json(history.UNSAVED_APPLIED) != earlier.id:
            owed(h)
            h.put(history.UNSAVED_APPLIED, earlier.id)
        if changes is not None:
            changes(h)

    return apply


def _not_saved(
    config: Any,
    node: str,
    directory: Path,
    earlier: unsaved.Unsaved | None,
    changes: StateChanges | None,
    error: str,
) -> None:
    """The state did not take this run: keep what it owed aside and say what to do."""
    log = get_logger()
    log.warning("history_not_saved", error=error)
    state_dir = config.state_dir_for(node)
    if changes is None and earlier is None:
        return  # only the run's row is lost: nothing decides on it
    now = clock.now().wall  # for people: when it started, in the node's own time
    since = earlier.since if earlier is not None else now
    writes = tuple(w.as_json() for w in changes.writes) if changes is not None else ()
    try:
        kept = unsaved.keep(directory, node, state_dir, writes, error, now, earlier)
    except OSError as exc:
        log.error(
            "state_not_saved",
            state_dir=str(state_dir),
            error=error,
            fallback=str(directory),
            fallback_error=exc.strerror or str(exc),
            what_now=(
                f"nodecheck cannot record what it did to this node (e.g. its drain) and so "
                f"will NOT resume it by itself: make {state_dir} writable (free space), then "
                f"check the node and resume it by hand (scontrol update NodeName={node} "
                "State=RESUME)"
            ),
        )
    else:
        log.error(
            "state_not_saved",
            state_dir=str(state_dir),
            error=error,
            kept_in=str(kept),
            since=since,
            what_now=(
                f"make {state_dir} writable (free space, remount read-write): the next run "
                f"that can write it records what is kept in {kept} and nodecheck resumes its "
                f"drain as usual; until then `nodecheck report` lists this node; a reboot "
                f"loses {kept} (tmpfs), and a drain in it must then be resumed by hand"
            ),
        )
    _metrics_say_unsaved(config, node, since)


def _metrics_say_unsaved(config: Any, node: str, since: float) -> None:
    """The metrics file, rewritten from what the state still shows, says the node has
    state that could not be written (nodecheck_state_unsaved 1). Best effort: the same
    full disk may hold it."""
    try:
        recording.rewrite_state_unsaved(config, node, since, all_checks)
    except Exception as exc:  # metrics must never fail the run
        get_logger().warning("metrics_not_written", error=f"{type(exc).__name__}: {exc}")
