"""Act: carry out a plan (nodecheck/core/plan.py) through the Slurm backend, within the budget.

Only reached when the plan needs the controller, so the healthy prolog never imports this.
Nothing here decides: the plan says drain or resume and with what reason; this module
makes the call, retrying until the run's deadline, and reports what happened. Before a
drain the breaker wants, it claims the breaker's slot (run/breaker.py chooses, slurmctld
refuses a slot another node holds): the one step that keeps the limit exact in a wave.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from nodecheck.core.node import NodeInfo
from nodecheck.core.plan import Acted, BreakerState, Plan, Step
from nodecheck.hostlist import expand
from nodecheck.log import get_logger
from nodecheck.run import breaker, decide
from nodecheck.run.config import Config
from nodecheck.slurm import SlurmBackend, SlurmError, set_call_deadline
from nodecheck.slurm.backend import select_backend
from nodecheck.slurm.claims import LICENSE, Claim

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
    the one ownership rule (core/node.py); a refusal says why."""
    from nodecheck.core.node import drain_owner

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
            slurm = backend()
            try:
                return _drain(plan, node, slurm, limits, deadline)
            finally:
                _log_cost(slurm)
        if plan.step is Step.RESUME:
            slurm = backend()
            with_retries("resume", deadline, lambda: slurm.resume(node))
            if limits.max_share > 0:
                release_share_slots(slurm, node)
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
    mine: list[str] = []
    if plan.check_wave:
        # The breaker's one exact step: a slot slurmctld lets only one node hold. No slot,
        # no drain: nothing is drained and then undone, so a wave cannot flap.
        taken = take_slots(slurm, node, limits, deadline)
        if isinstance(taken, BreakerState):
            return Acted("breaker open", backed_off=taken)
        mine = taken
    try:
        with_retries("drain", deadline, lambda: slurm.drain(node, reason))
    except SlurmError:
        release_slots(slurm, mine)  # a slot without its drain would hold the limit for nothing
        raise
    return Acted(plan.action)


def take_slots(
    slurm: SlurmBackend, node: str, limits: breaker.BreakerLimits, deadline: float
) -> list[str] | BreakerState:
    """Claim the slots this drain needs (a rate slot; a share slot in each partition where
    the share limit could bind), or the breaker's open state when one is not to be had
    (the slots already taken are given back). Controller calls: one read of the slots and
    one claim; the share check adds a partition read where the share limit is on, and a
    second claim only where it could bind."""
    slots: Any = slurm
    minutes = max(1, math.ceil(limits.window_min))
    held = _held(with_retries("claims", deadline, slots.claims))
    mine: list[str] = []
    if limits.max_drains > 0:
        got = _claim(
            slots,
            node,
            minutes,
            deadline,
            held,
            lambda h, t: breaker.choose_rate_slot(h, limits, t),
        )
        if isinstance(got, BreakerState):
            return got
        mine.append(got[0])
        held = got[1]
    if limits.max_share <= 0:
        return mine
    try:
        return _take_share_slots(slots, node, limits, deadline, minutes, held, mine)
    except SlurmError:
        release_slots(slurm, mine)  # the drain will not happen: its rate slot counts nothing
        raise


def _take_share_slots(
    slots: Any,
    node: str,
    limits: breaker.BreakerLimits,
    deadline: float,
    minutes: int,
    held: list[breaker.Held],
    mine: list[str],
) -> list[str] | BreakerState:
    """take_slots' second half: a share slot in each of the node's partitions where the
    share limit could be crossed before the rate limit stops a wave."""
    slurm = slots
    drains: list[NodeInfo] | None = None
    for part in _partitions(slurm, node, deadline):
        info = with_retries("partition", deadline, lambda p=part: slots.partition(p))
        members = frozenset(expand(info.nodes)) if info.nodes else frozenset()
        if drains is None:
            drains = nodecheck_drains(slurm, deadline)
        counted = breaker.share_count(part, members, drains, held, node)
        if not breaker.needs_share_slot(limits, info.total, counted, held):
            continue

        def choose(
            h: list[breaker.Held],
            t: frozenset[str],
            p: str = part,
            n: int = info.total,
            m: frozenset[str] = members,
            d: list[NodeInfo] = drains,
        ) -> breaker.SlotChoice:
            # Counted again from the slots as read now: after a refused claim the winner's
            # slot is one more drain in the partition.
            return breaker.choose_share_slot(
                p, n, breaker.share_count(p, m, d, h, node), h, limits, t
            )

        got = _claim(slots, node, minutes, deadline, held, choose)
        if isinstance(got, BreakerState):
            release_slots(slurm, mine)
            return got
        mine.append(got[0])
        held = got[1]
    return mine


def _log_cost(slurm: SlurmBackend) -> None:
    """What this run asked of slurmctld, in the backend's own count (bench/scale.py sums
    it over a wave; sdiag gives slurmctld's side)."""
    calls = getattr(slurm, "calls", None)
    if calls is not None:
        get_logger().info("slurm_cost", calls=calls, bytes_read=getattr(slurm, "bytes_read", 0))


def _held(claims: list[Claim]) -> list[breaker.Held]:
    return [breaker.Held(c.name, c.nodes) for c in claims]


def _claim(
    slots: Any,
    node: str,
    minutes: int,
    deadline: float,
    held: list[breaker.Held],
    choose: Callable[[list[breaker.Held], frozenset[str]], breaker.SlotChoice],
) -> tuple[str, list[breaker.Held]] | BreakerState:
    """Choose, claim; when slurmctld says another node took that slot a moment ago, read
    the slots again and choose again, until a claim holds or none is left to choose."""
    tried: frozenset[str] = frozenset()
    while True:
        choice = choose(held, tried)
        if choice.slot is None:
            return choice.state
        slot = choice.slot
        if with_retries("claim", deadline, lambda s=slot: slots.claim(s, node, minutes)):
            log = get_logger()
            log.info("breaker_slot_claimed", slot=slot, minutes=minutes)
            if getattr(slots, "license_claims", True) is False:
                log.warning(
                    "breaker_license_missing",
                    advice=f"add Licenses={LICENSE}:1000 to slurm.conf (docs/safety.md)",
                    meanwhile="the slot reserves this node until it ends",
                )
            return slot, [*held, breaker.Held(slot, node)]
        tried = tried | {slot}
        held = _held(with_retries("claims", deadline, slots.claims))


def release_slots(slurm: SlurmBackend, slots: list[str]) -> None:
    """Give slots back (one attempt each: the drain they were for did not happen)."""
    for slot in slots:
        try:
            slurm.release(slot)  # type: ignore[attr-defined]
        except SlurmError as exc:
            get_logger().warning("breaker_slot_not_released", slot=slot, error=str(exc))


def release_share_slots(slurm: SlurmBackend, node: str) -> None:
    """The node is back in service: its share slots (which count nodecheck's drains now in
    a partition) end with its drain. Rate slots stay until Slurm ends them: they count the
    drains begun within the window, this one among them. Best effort, one attempt: a slot
    left behind ends with its window."""
    try:
        held = _held(slurm.claims())  # type: ignore[attr-defined]
    except SlurmError as exc:
        get_logger().warning("breaker_slot_not_released", error=str(exc))
        return
    mine = [h.name for h in held if h.node == node and h.name.startswith(breaker.SHARE_SLOT)]
    release_slots(slurm, mine)


def _partitions(slurm: SlurmBackend, node: str, deadline: float) -> tuple[str, ...]:
    """This node's partitions, as gather read them a moment ago (no second call)."""
    seen = getattr(slurm, "last_read", {}).get(node)
    if seen is None:
        seen = with_retries("node_info", deadline, lambda: slurm.node_info(node))
    return seen.partitions


def nodecheck_drains(slurm: SlurmBackend, deadline: float) -> list[NodeInfo]:
    """The drained nodes, for counting nodecheck's drains in a partition: from slurmdbd's
    open drain events (one sacctmgr call; slurmctld is not asked at all), else, without
    slurmdbd, from the whole node table (one O(N) call, made only by a node that already
    holds a rate slot: at most breaker_max_drains such reads per window)."""
    from nodecheck.slurm.dbd import DbdReader

    scontrol = getattr(slurm, "scontrol", None) or getattr(
        getattr(slurm, "_cli", None), "scontrol", "/usr/bin/scontrol"
    )
    reader = DbdReader(
        os.path.join(os.path.dirname(scontrol), "sacctmgr"),
        getattr(slurm, "slurm_conf", None),
        timeout_s=5.0,
    )
    try:
        events = reader.open_drains()
    except SlurmError as exc:
        get_logger().warning("slurmdbd_unread", error=str(exc), using="the node table")
        return [n for n in with_retries("list_nodes", deadline, slurm.list_nodes) if n.drained]
    get_logger().info(
        "breaker_drains_counted",
        source="slurmdbd",
        drained=len(events),
        bytes_read=reader.count.bytes_read,
    )
    return [NodeInfo(e.node, ("DRAIN",), e.reason) for e in events]
