"""Act: carry out a plan (nodecheck/run/plan.py) through the Slurm backend, within the budget.

Only reached when the plan needs the controller, so the healthy prolog never imports this.
Nothing here decides: the plan says drain or resume and with what reason; this module
makes the call, retrying until the run's deadline, and reports what happened. The one
judgement after a drain, the wave back-off (did nodes failing at the same moment push
nodecheck past the breaker's limit?), is the breaker's pure arithmetic (`backs_off`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from nodecheck.log import get_logger
from nodecheck.run import breaker, decide
from nodecheck.run.config import Config
from nodecheck.run.plan import Acted, Plan, Step
from nodecheck.slurm import SlurmBackend, SlurmError, select_backend, set_call_deadline

T = TypeVar("T")
# Waits between attempts: short first (a busy controller answers soon), then steadier, all
# within the budget. Retries go on until the deadline, not for a fixed count.
_BACKOFF_S = (0.25, 0.5, 1.0, 2.0)
_MIN_CALL_S = 0.5  # no new attempt with less time than this left


def backend_for(config: Config | None, env: Mapping[str, str]) -> SlurmBackend:
    preference = config.slurm_backend if config else "auto"
    scontrol = config.scontrol if config else "/usr/bin/scontrol"
    slurm_conf = (config.slurm_conf if config else "") or env.get("SLURM_CONF") or None
    choice = select_backend(preference, scontrol, slurm_conf)
    get_logger().info("slurm_backend", backend=choice.backend.name, why=choice.why)
    return choice.backend


def with_retries(what: str, deadline: float, call: Callable[[], T]) -> T:
    """Call the controller until it answers or the run's deadline comes."""
    log = get_logger()
    last: Exception | None = None
    set_call_deadline(deadline)  # an unreachable controller must not outlast the budget
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except SlurmError as exc:
            last = exc
            log.warning("slurm_call_failed", call=what, attempt=attempt, error=str(exc))
        pause = _BACKOFF_S[min(attempt - 1, len(_BACKOFF_S) - 1)]
        if time.monotonic() + pause + _MIN_CALL_S > deadline:
            break
        time.sleep(pause)
    raise SlurmError(f"{what} failed after {attempt} attempt(s) within the budget: {last}")


def resume_if_ours(backend: SlurmBackend, node: str, kept: str | None) -> str:
    """`nodecheck resume` (an admin's command): resume a node whose drain is nodecheck's.
    `kept`: the reason the node's state says nodecheck set (None: no such state here), for
    the one ownership rule (run/ownership.py); a refusal says why."""
    from nodecheck.run.ownership import drain_owner

    info = backend.node_info(node)
    owner = drain_owner(info, kept)
    if not info.drained:
        return "not drained"
    if not owner.ours:
        return f"refused: {owner.why}; reason: {info.reason}"
    backend.resume(node)
    return "resumed"


def breaker_limits(config: Config | None) -> breaker.BreakerLimits:
    return decide.breaker_limits(decide.PlanSettings.from_config(config))


def carry_out(
    plan: Plan,
    node: str,
    backend: Callable[[], SlurmBackend],
    limits: breaker.BreakerLimits,
    deadline: float,
) -> Acted:
    """Make the plan's controller call, if it has one. `backend` is called only then."""
    try:
        if plan.step is Step.DRAIN:
            return _drain(plan, node, backend(), limits, deadline)
        if plan.step is Step.RESUME:
            slurm = backend()
            with_retries("resume", deadline, lambda: slurm.resume(node))
            return Acted(plan.action)
    except SlurmError as exc:
        step = "drain" if plan.step is Step.DRAIN else "clear"
        get_logger().error("slurm_action_failed", action=step, error=str(exc))
        return Acted(f"{step} failed", failed=True, error=str(exc))
    return Acted(plan.action)


def _drain(
    plan: Plan,
    node: str,
    slurm: SlurmBackend,
    limits: breaker.BreakerLimits,
    deadline: float,
) -> Acted:
    assert plan.reason is not None
    reason = plan.reason
    with_retries("drain", deadline, lambda: slurm.drain(node, reason))
    if not plan.check_wave:
        return Acted(plan.action)
    # Every node checked the breaker before draining, but a wave of simultaneous failures
    # all saw the same "within limits" picture: re-read once the wave has landed, and the
    # drains ranked past the limit back off (resume), leaving the node to the breaker hold.
    time.sleep(min(0.5, max(0.0, deadline - time.monotonic()) / 4))
    after = with_retries("list_nodes", deadline, slurm.list_nodes)
    crowded = breaker.backs_off(after, node, limits, _drained_at(after, node))
    if not crowded.open:
        return Acted(plan.action)
    with_retries("resume", deadline, lambda: slurm.resume(node))
    return Acted("breaker open", backed_off=crowded)


def _drained_at(nodes: list, node: str) -> float | None:
    """Slurm's clock at this node's drain a moment ago (its reason time, stamped by
    slurmctld): the back-off's window is measured on Slurm's clock, as the reason times it
    counts are, never on the node's (None: not found, and the node's clock it is)."""
    mine = next((n for n in nodes if n.name == node), None)
    return breaker.reason_epoch(mine.reason_time) if mine is not None else None
