"""The unhealthy path: drain through Slurm, and resume what we drained once it passes.

Only reached when the verdict asks for it, so the healthy prolog never imports this.
A local marker in the node's state remembers that nodecheck drained the node, so the
health phase of a healthy node needs no controller call either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from nodecheck.config import Config
from nodecheck.log import get_logger
from nodecheck.policy import Action, Verdict
from nodecheck.slurm import SlurmBackend, SlurmError, select_backend
from nodecheck.state import StateError, open_state

DRAIN_MARKER = "drain"
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


def drain(backend: SlurmBackend, node: str, reason: str, attempts: int, deadline: float) -> str:
    """Drain with our reason, unless someone else already drained the node."""
    info = _with_retries("node_info", attempts, deadline, lambda: backend.node_info(node))
    if info.drained and not info.drained_by_nodecheck:
        get_logger().warning("admin_drain_kept", existing_reason=info.reason)
        return "admin drain kept"
    _with_retries("drain", attempts, deadline, lambda: backend.drain(node, reason))
    return "drained"


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
    assert verdict.reason is not None
    attempts = config.drain_attempts if config else 3
    taken = drain(backend_for(config, env), node, verdict.reason, attempts, deadline)
    if taken == "drained":
        try:
            with open_state(_state_dir(config, node)) as state:
                state.put_json(
                    DRAIN_MARKER, {"reason": verdict.reason, "at": time.time(), "passes": 0}
                )
        except (StateError, OSError) as exc:
            get_logger().warning("drain_marker_not_saved", error=str(exc))
    get_logger().warning("drain", result=taken, reason=verdict.reason)
    return taken


def _maybe_resume(config: Config | None, node: str, env: Mapping[str, str]) -> str:
    """Health phase, node passed: resume after N consecutive passes if we drained it."""
    with open_state(_state_dir(config, node)) as state:
        marker = state.get_json(DRAIN_MARKER)
        if not marker:
            return "none"
        needed = config.resume_after_passes if config else 1
        passes = int(marker.get("passes", 0)) + 1
        if passes < needed:
            state.put_json(DRAIN_MARKER, {**marker, "passes": passes})
            get_logger().info("resume_pending", passes=passes, needed=needed)
            return f"passed {passes}/{needed} before resume"
        result = resume_if_ours(backend_for(config, env), node)
        state.put_json(DRAIN_MARKER, None)
    get_logger().warning("resume", result=result, drained_for=marker.get("reason"))
    return result
