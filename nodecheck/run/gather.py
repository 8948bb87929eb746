"""Gather, after the checks: what the decision needs beyond the results, read once.

The history window (drain marker, flap count, passes since the drain, breaker hold, a
pending failure) comes from the node's state in one read; this node's controller state from
one small controller read of this node alone (the breaker claims its slot in act).
Both only when the verdict needs them (decide.needs_history / needs_slurm): a healthy
prolog/epilog reads neither and never imports nodecheck.slurm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from nodecheck.core import clock
from nodecheck.core.plan import HistoryWindow, Situation, SlurmView
from nodecheck.log import get_logger
from nodecheck.run.decide import (
    PlanSettings,
    Verdict,
    needs_controller_time,
    needs_history,
    needs_slurm,
)
from nodecheck.store import history, unsaved

if TYPE_CHECKING:
    from nodecheck.slurm import SlurmBackend


def read_window(
    state_dir: Path,
    settings: PlanSettings,
    now: clock.Stamp | float,
    fallback: tuple[Path, str] | None = None,
) -> HistoryWindow:
    """The history window in one read. Unreadable state gives an empty window that says so:
    a drain goes ahead without flap control, a resume waits. `fallback` (directory, node):
    what earlier runs could not write to the state (store/unsaved.py) is read over it, so
    that a drain made while the state was read-only or full can still be resumed."""

    def read(h: history.History) -> tuple[HistoryWindow, object]:
        return history.window(h, now, settings.flap_window_s), h.store.get_json(
            history.UNSAVED_APPLIED
        )

    try:
        window, applied = history.with_history(state_dir, read)
    except (history.StateError, OSError) as exc:
        get_logger().warning("history_unusable", error=str(exc))
        window, applied = HistoryWindow(readable=False, error=str(exc)), None
    if fallback is None:
        return window
    try:
        kept = unsaved.load(*fallback, state_dir=state_dir)
    except OSError as exc:
        get_logger().error("unsaved_state_refused", error=exc.strerror or str(exc))
        return window
    if kept is None or kept.id == applied:
        return window
    get_logger().warning(
        "unsaved_state_read", kept_in=str(unsaved.path_for(*fallback)), since=kept.since
    )
    stamp = now if isinstance(now, clock.Stamp) else clock.Stamp(now)
    return unsaved.over_window(window, kept, stamp, settings.flap_window_s)


def read_slurm(
    backend: SlurmBackend,
    node: str,
    settings: PlanSettings,
    deadline: float,
    spread_wave: bool,
) -> SlurmView:
    """This node's controller state: one small read of this node alone, whatever the
    cluster's size. The breaker needs no snapshot of the other nodes: act claims one of its
    slots before the drain (run/breaker.py, slurm/claims.py). `spread_wave`: a node not
    drained yet waits a little first, so that a wave of simultaneous failures reaches
    slurmctld spread out."""
    from nodecheck.run import breaker
    from nodecheck.run.act import with_retries
    from nodecheck.slurm import SlurmError

    try:
        if settings.breaker_enabled and spread_wave:
            breaker.jitter(deadline, settings.breaker_jitter_s)
        info = with_retries("node_info", deadline, lambda: backend.node_info(node))
        return SlurmView(info)
    except SlurmError as exc:
        get_logger().warning("slurm_read_failed", error=str(exc))
        return SlurmView(error=str(exc))


def gather(
    verdict: Verdict,
    phase: str,
    node: str,
    job_id: str | None,
    state_dir: Path,
    settings: PlanSettings,
    deadline: float,
    backend_factory: Callable[[], SlurmBackend],
    fallback_dir: Path | None = None,
) -> Situation:
    """Everything the plan needs, in the order it is needed; the controller last and only
    if the history says the plan depends on it."""
    stamp = clock.now()
    if not needs_history(verdict, phase):
        return Situation(node, phase, job_id, stamp.wall, clock=stamp)
    fallback = (fallback_dir, node) if fallback_dir is not None else None
    window = read_window(state_dir, settings, stamp, fallback)
    if not needs_slurm(verdict, phase, window, settings, stamp):
        return Situation(node, phase, job_id, stamp.wall, window, clock=stamp)
    try:
        backend = backend_factory()
    except Exception as exc:  # SlurmError or a broken backend: nothing can be read
        get_logger().warning("slurm_read_failed", error=f"{type(exc).__name__}: {exc}")
        view = SlurmView(error=str(exc))
        return Situation(node, phase, job_id, stamp.wall, window, view, clock=stamp)
    view = read_slurm(backend, node, settings, deadline, spread_wave=window.marker is None)
    if view.node is not None and needs_controller_time(verdict, window, view, settings):
        view = replace(view, controller_now=read_controller_time(backend, deadline))
    stamp = clock.now()
    return Situation(node, phase, job_id, stamp.wall, window, view, clock=stamp)


def read_controller_time(backend: SlurmBackend, deadline: float) -> float | None:
    """slurmctld's clock now, as the backend can tell it (the JSON it read already says it;
    else one small call); None when it cannot, and the plan then falls back to the node's
    clock (decide.slurm_now), with a log line that says so."""
    from nodecheck.slurm import SlurmError, set_call_deadline

    tell = getattr(backend, "controller_time", None)
    if tell is None:
        get_logger().warning(
            "controller_time_unknown", backend=backend.name, using="the node's clock"
        )
        return None
    set_call_deadline(deadline)
    try:  # one attempt: the controller just answered, and the drain needs the budget more
        return float(tell())
    except SlurmError as exc:
        get_logger().warning("controller_time_unknown", error=str(exc), using="the node's clock")
        return None
