"""The unhealthy path: drain through Slurm, and resume what we drained once it passes.

Only reached when the verdict asks for it, so the healthy prolog never imports this.
A local marker in the node's state remembers that nodecheck drained the node, so the
health phase of a healthy node needs no controller call either. Drain episodes, resumes
and flap holds go into the node's history (nodecheck/store/history.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from nodecheck.log import get_logger
from nodecheck.run import breaker
from nodecheck.run.config import Config
from nodecheck.run.decide import Action, Verdict
from nodecheck.run.reason import parse_reason
from nodecheck.slurm import SlurmBackend, SlurmError, select_backend, set_call_deadline
from nodecheck.store import history
from nodecheck.store.state import StateError

DRAIN_MARKER = history.DRAIN_MARKER
T = TypeVar("T")


def backend_for(config: Config | None, env: Mapping[str, str]) -> SlurmBackend:
    preference = config.slurm_backend if config else "auto"
    scontrol = config.scontrol if config else "/usr/bin/scontrol"
    slurm_conf = (config.slurm_conf if config else "") or env.get("SLURM_CONF") or None
    choice = select_backend(preference, scontrol, slurm_conf)
    get_logger().info("slurm_backend", backend=choice.backend.name, why=choice.why)
    return choice.backend


def _with_retries(what: str, attempts: int, deadline: float, call: Callable[[], T]) -> T:
    log = get_logger()
    last: Exception | None = None
    set_call_deadline(deadline)  # an unreachable controller must not outlast the budget
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except SlurmError as exc:
            last = exc
            log.warning("slurm_call_failed", call=what, attempt=attempt, error=str(exc))
            if attempt == attempts or time.monotonic() + 1.0 > deadline:
                break
            time.sleep(1.0)
    raise SlurmError(f"{what} failed after retries: {last}")


def resume_if_ours(backend: SlurmBackend, node: str) -> str:
    info = backend.node_info(node)
    if not info.drained:
        return "not drained"
    if not info.drained_by_nodecheck:
        return "refused: drained by someone else"
    backend.resume(node)
    return "resumed"


def _state_dir(config: Config | None, node: str) -> Path:
    return config.state_dir_for(node) if config else Path("/var/lib/nodecheck")


def apply_verdict(
    phase: str,
    config: Config | None,
    node: str,
    verdict: Verdict,
    deadline: float,
    env: Mapping[str, str],
) -> str:
    log = get_logger()
    # From here every controller call (the backend choice's version probe, a resume
    # included) ends by the run's deadline.
    set_call_deadline(deadline)
    try:
        if verdict.action is Action.DRAIN:
            return _drain_and_mark(config, node, verdict, deadline, env)
        if verdict.action is Action.CLEAR and phase == "health":
            return _maybe_resume(config, node, env)
    except SlurmError as exc:
        log.error("slurm_action_failed", action=verdict.action.value, error=str(exc))
        return f"{verdict.action.value} failed"
    except StateError as exc:
        log.error("state_unusable", error=str(exc))
        return "state unusable"
    return "none"


def _drain_and_mark(
    config: Config | None, node: str, verdict: Verdict, deadline: float, env: Mapping[str, str]
) -> str:
    """Drain with our reason unless an admin drained the node first; count drain episodes
    in the history and hold a node that flaps (drained more than flap_max_drains times
    within flap_window_s) with a reason that says so."""
    assert verdict.reason is not None
    log = get_logger()
    attempts = config.drain_attempts if config else 3
    backend = backend_for(config, env)
    limits = breaker_limits(config)
    state_dir = _state_dir(config, node)
    if limits.enabled:
        if not _marked_drained(state_dir):  # a node already ours is not part of a wave
            breaker.jitter(deadline, limits.jitter_s)
        # One call gives both this node's state and what the breaker needs.
        nodes = _with_retries("list_nodes", attempts, deadline, backend.list_nodes)
        info = next((n for n in nodes if n.name == node), None) or backend.node_info(node)
    else:
        info = _with_retries("node_info", attempts, deadline, lambda: backend.node_info(node))
    if info.drained and not info.drained_by_nodecheck:
        log.warning("admin_drain_kept", existing_reason=info.reason)
        return "admin drain kept"
    if limits.enabled and not info.drained_by_nodecheck:
        tripped = breaker.evaluate(nodes, node, limits)
        if tripped.open:
            return _breaker_open(state_dir, verdict.reason, tripped)
    now = time.time()
    new_episode = not info.drained
    max_drains = config.flap_max_drains if config else 0
    window = float(config.flap_window_s) if config else 86400.0
    reason, flapping = verdict.reason, False
    ours = parse_reason(info.reason) if info.drained else None
    held = ours is not None and history.is_flapping_message(ours.message)
    if max_drains:
        try:
            prior = history.with_history(state_dir, lambda h: h.events_since("drain", now - window))
        except (StateError, OSError) as exc:
            log.warning("history_unusable", error=str(exc))
            prior = 0
        drains = prior + (1 if new_episode else 0)
        if held or drains > max_drains:
            flapping = True
            reason = history.flapping_reason(
                verdict.reason, history.flapping_prefix(max(drains, 1), window)
            )
    # Already drained by us (the epilog after a failed prolog, a health run on a node still
    # broken): the first reason stands and the controller is spared a write, unless the
    # node has just started to flap and its reason must say so.
    already = info.drained_by_nodecheck and (held or not flapping)
    if not already:
        _with_retries("drain", attempts, deadline, lambda: backend.drain(node, reason))
    if limits.enabled and not info.drained_by_nodecheck:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic()) / 4))  # let a wave land
        after = _with_retries("list_nodes", attempts, deadline, backend.list_nodes)
        crowded = breaker.backs_off(after, node, limits)
        if crowded.open:
            _with_retries("resume", attempts, deadline, lambda: backend.resume(node))
            return _breaker_open(state_dir, reason, crowded)
    if already:
        reason = info.reason

    def mark(h: history.History) -> None:
        with h.write():
            if not (already and h.store.get_json(DRAIN_MARKER)):
                h.put(DRAIN_MARKER, {"reason": reason, "at": now, "flapping": flapping})
            if new_episode:
                h.add_event("drain", reason, now)
            if flapping and not held:
                h.add_event("flap_hold", reason, now)

    try:
        history.with_history(state_dir, mark)
    except (StateError, OSError) as exc:
        log.warning("drain_marker_not_saved", error=str(exc))
    taken = ("already drained" if already else "drained") + (" (flapping)" if flapping else "")
    log.warning("drain", result=taken, reason=reason, new_episode=new_episode)
    return taken


def _marked_drained(state_dir: Path) -> bool:
    try:
        return bool(history.with_history(state_dir, lambda h: h.store.get_json(DRAIN_MARKER)))
    except (StateError, OSError):
        return False


def breaker_limits(config: Config | None) -> breaker.BreakerLimits:
    if config is None:
        return breaker.BreakerLimits()
    return breaker.BreakerLimits(
        max_share=float(config.breaker_max_share),
        floor=config.breaker_floor,
        max_drains=config.breaker_max_drains,
        window_min=float(config.breaker_window_min),
        jitter_s=float(config.breaker_jitter_s),
    )


def _breaker_open(state_dir: Path, reason: str, tripped: breaker.BreakerState) -> str:
    """Too much is drained already: leave this node to Slurm's own prolog/epilog-failure
    drain and a human, say so loudly, and count it for the metrics."""
    get_logger().error(
        "circuit_breaker_open",
        why=tripped.why,
        would_drain=reason,
        partition=tripped.partition,
        what_now="nodecheck does not drain; Slurm drains on the non-zero exit; a human decides",
    )

    def count(h: history.History) -> None:
        with h.write():
            h.add_event("breaker_open", f"{tripped.why}; would drain: {reason}", time.time())

    try:
        history.with_history(state_dir, count)
    except (StateError, OSError) as exc:
        get_logger().warning("history_unusable", error=str(exc))
    return "breaker open"


def _hold_reason(config: Config | None, marker: Mapping[str, object]) -> str | None:
    """Why a drain must not end by itself: the node flaps, or its check's faults do not
    show again once they are past (an XID is read once from the kernel log)."""
    if marker.get("flapping"):
        return "flapping"
    parsed = parse_reason(str(marker.get("reason", "")))
    manual = config.manual_resume_checks if config else ["gpu.xid"]
    if parsed is not None and parsed.check_id in manual:
        return f"{parsed.check_id} needs a manual resume"
    return None


def _maybe_resume(config: Config | None, node: str, env: Mapping[str, str]) -> str:
    """Health phase, node passed. Nothing to do (and no controller call) unless the local
    marker says nodecheck drained this node. Then: resume after `resume_after_passes`
    consecutive health passes since the drain (counted in the history), only if the
    drain is still ours; a flapping node stays drained until an admin resumes it."""
    log = get_logger()
    state_dir = _state_dir(config, node)
    needed = config.resume_after_passes if config else 1

    def look(h: history.History) -> tuple[dict | None, int]:
        marker = h.store.get_json(DRAIN_MARKER)
        if not marker:
            return None, 0
        return marker, h.health_passes_since(float(marker.get("at", 0))) + 1

    marker, passes = history.with_history(state_dir, look)
    if not marker:
        return "none"
    backend = backend_for(config, env)
    hold = _hold_reason(config, marker)
    if hold:
        # Held drains are left to an admin; ask Slurm only to notice that one took over.
        info = backend.node_info(node)
        if info.drained_by_nodecheck:
            log.warning(
                "flap_hold" if hold == "flapping" else "manual_resume_hold", reason=info.reason
            )
            return f"held: {hold}"
        result = "not drained" if not info.drained else "refused: drained by someone else"
    elif passes < needed:
        log.info("resume_pending", passes=passes, needed=needed)
        return f"passed {passes}/{needed} before resume"
    else:
        result = resume_if_ours(backend, node)

    def clear(h: history.History) -> None:
        with h.write():
            h.put(DRAIN_MARKER, None)
            if result == "resumed":
                h.add_event("resume", str(marker.get("reason", "")), time.time())

    history.with_history(state_dir, clear)
    log.warning("resume", result=result, drained_for=marker.get("reason"), passes=passes)
    return result
