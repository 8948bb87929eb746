"""Gather, after the checks: what the decision needs beyond the results, read once.

The history window (drain marker, flap count, passes since the drain, breaker hold, a
pending failure) comes from the node's state in one read; this node's controller state and,
with the breaker enabled, the breaker's snapshot (every node) from one controller read.
Both only when the verdict needs them (decide.needs_history / needs_slurm): a healthy
prolog/epilog reads neither and never imports nodecheck.slurm.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nodecheck.log import get_logger
from nodecheck.run.decide import PlanSettings, Verdict, needs_history, needs_slurm
from nodecheck.run.plan import HistoryWindow, Situation, SlurmView
from nodecheck.store import history

if TYPE_CHECKING:
    from nodecheck.slurm import SlurmBackend


def read_window(state_dir: Path, settings: PlanSettings, now: float) -> HistoryWindow:
    """The history window in one read. Unreadable state gives an empty window that says so:
    a drain goes ahead without flap control, a resume waits."""
    try:
        return history.with_history(
            state_dir, lambda h: history.window(h, now, settings.flap_window_s)
        )
    except (history.StateError, OSError) as exc:
        get_logger().warning("history_unusable", error=str(exc))
        return HistoryWindow(readable=False, error=str(exc))


def read_slurm(
    backend: SlurmBackend,
    node: str,
    settings: PlanSettings,
    deadline: float,
    spread_wave: bool,
) -> SlurmView:
    """This node's controller state; with the breaker enabled, every node (one call gives
    both). `spread_wave`: a node not drained yet waits a little first, so that a wave of
    simultaneous failures does not read one identical picture."""
    from nodecheck.run import breaker
    from nodecheck.slurm import SlurmError
    from nodecheck.slurm.act import with_retries

    try:
        if settings.breaker_enabled:
            if spread_wave:
                breaker.jitter(deadline, settings.breaker_jitter_s)
            nodes = tuple(with_retries("list_nodes", deadline, backend.list_nodes))
            info = next((n for n in nodes if n.name == node), None)
            if info is None:
                info = with_retries("node_info", deadline, lambda: backend.node_info(node))
            return SlurmView(info, nodes)
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
) -> Situation:
    """Everything the plan needs, in the order it is needed; the controller last and only
    if the history says the plan depends on it."""
    now = time.time()
    if not needs_history(verdict, phase):
        return Situation(node, phase, job_id, now)
    window = read_window(state_dir, settings, now)
    if not needs_slurm(verdict, phase, window, settings, now):
        return Situation(node, phase, job_id, now, window)
    try:
        backend = backend_factory()
    except Exception as exc:  # SlurmError or a broken backend: nothing can be read
        get_logger().warning("slurm_read_failed", error=f"{type(exc).__name__}: {exc}")
        return Situation(node, phase, job_id, now, window, SlurmView(error=str(exc)))
    view = read_slurm(backend, node, settings, deadline, spread_wave=window.marker is None)
    return Situation(node, phase, job_id, time.time(), window, view)
