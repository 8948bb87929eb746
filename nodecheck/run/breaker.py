"""Drain circuit breaker: nodecheck stops draining when too much is already drained.

A bad config push or a driver update can make every node fail at once. If nodecheck has
already drained more than `breaker_max_share` of a partition this node belongs to, or
`breaker_max_drains` nodes within `breaker_window_min` minutes, the breaker is open.
nodecheck then fails open (`breaker_open_action = "run"`, the default): it does not drain
by any route, the hook exits 0 and the job runs, the failure is logged at error and the node
is recorded as held back. A wave of failures is far more often a bad config push or a
driver mismatch than a wave of broken hardware. `breaker_open_action = "fail"` keeps the
fail-closed behaviour: the hook exits non-zero and Slurm drains the node.

The hooks hold the limit exactly with slots (below; run/act.py claims them, slurm/claims.py
talks to slurmctld): a node drains only once slurmctld gave it one. What each failing node
reads is its own record and the slots, never the node table. `evaluate`, `backs_off` and
`partition_status` judge a snapshot of nodes (pure): the report's per-partition figures and
callers that hold such a snapshot already.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nodecheck.core.node import NodeInfo, drain_owner
from nodecheck.core.plan import BreakerState
from nodecheck.core.reason import parse_reason
from nodecheck.slurm import reason_epoch


@dataclass(frozen=True)
class BreakerLimits:
    max_share: float = 0.10  # of a partition, 0 disables the share limit
    floor: int = 3  # nodecheck may always have this many nodes drained per partition
    max_drains: int = 20  # within the window, across the cluster; 0 disables the rate limit
    window_min: float = 10.0
    jitter_s: float = 2.0  # most a node waits before its first drain (0: not at all)

    @property
    def enabled(self) -> bool:
        return self.max_share > 0 or self.max_drains > 0


def _ours(n: NodeInfo) -> bool:
    """The breaker judges other nodes from the controller's view: no state of theirs, so
    a drain counts as nodecheck's only when its reason is whole nodecheck's grammar (an
    admin's edit of one is the admin's drain, and does not hold back a real fault)."""
    return drain_owner(n, None).ours


def evaluate(
    nodes: Iterable[NodeInfo], node: str, limits: BreakerLimits, now: float | None = None
) -> BreakerState:
    """Would draining `node` now cross a limit? Pure: everything comes from `nodes`."""
    nodes = list(nodes)
    if not limits.enabled:
        return BreakerState(False, "breaker disabled")
    now = time.time() if now is None else now
    ours = [n for n in nodes if _ours(n) and n.name != node]
    if limits.max_drains > 0:
        since = now - limits.window_min * 60
        recent = sum(1 for n in ours if (reason_epoch(n.reason_time) or 0) >= since)
        if recent + 1 > limits.max_drains:
            why = (
                f"{recent} nodes drained by nodecheck in the last {limits.window_min:g} min "
                f"(limit {limits.max_drains})"
            )
            return BreakerState(True, why, recent=recent)
    me = next((n for n in nodes if n.name == node), None)
    partitions = me.partitions if me else ()
    for part in partitions:
        members = [n for n in nodes if part in n.partitions]
        drained = sum(1 for n in ours if part in n.partitions)
        allowed = max(limits.floor, math.floor(limits.max_share * len(members)))
        if limits.max_share > 0 and drained + 1 > allowed:
            why = (
                f"partition {part}: {drained} of {len(members)} nodes already drained by "
                f"nodecheck (limit {limits.max_share:.0%}, at least {limits.floor})"
            )
            return BreakerState(True, why, part, drained, len(members))
    return BreakerState(False, "within limits")


def partition_status(nodes: Iterable[NodeInfo], limits: BreakerLimits) -> list[BreakerState]:
    """Per partition: how close nodecheck's drains are to the share limit (for the report)."""
    nodes = list(nodes)
    parts = sorted({p for n in nodes for p in n.partitions})
    out = []
    for part in parts:
        members = [n for n in nodes if part in n.partitions]
        drained = sum(1 for n in members if _ours(n))
        allowed = max(limits.floor, math.floor(limits.max_share * len(members)))
        full = limits.max_share > 0 and drained >= allowed
        why = f"{drained}/{len(members)} drained by nodecheck, breaker opens above {allowed}"
        out.append(BreakerState(full, why, part, drained, len(members)))
    return out


def _key(n: NodeInfo) -> tuple[float, str]:
    """Oldest failure first: a drain the breaker had held back counts from when it was held
    (`held=` in its reason), any other from its drain time."""
    parsed = parse_reason(n.reason)
    if parsed is not None and parsed.held_since:
        return (float(parsed.held_since), n.name)
    return (reason_epoch(n.reason_time) or float("inf"), n.name)


def backs_off(
    nodes: Iterable[NodeInfo], node: str, limits: BreakerLimits, now: float | None = None
) -> BreakerState:
    """After draining: did nodes failing at the same moment push the count past a limit?

    Every node checks before it drains, but a wave of simultaneous failures all see the
    same "within limits" picture. So each re-reads after its drain and ranks nodecheck's
    drains by (drain time, name): the first ones within the limit keep their drain, the
    rest back off. Everyone ranks the same list, so the survivors agree.
    """
    nodes = list(nodes)
    now = time.time() if now is None else now
    ours = sorted((n for n in nodes if _ours(n)), key=_key)
    names = [n.name for n in ours]
    if node not in names:
        return BreakerState(False, "not drained by nodecheck")
    if limits.max_drains > 0:
        since = now - limits.window_min * 60
        recent = [n.name for n in ours if (reason_epoch(n.reason_time) or now) >= since]
        if node in recent and recent.index(node) >= limits.max_drains:
            why = (
                f"{len(recent)} nodes drained by nodecheck in the last "
                f"{limits.window_min:g} min (limit {limits.max_drains})"
            )
            return BreakerState(True, why, recent=len(recent))
    me = next(n for n in ours if n.name == node)
    for part in me.partitions:
        members = [n for n in nodes if part in n.partitions]
        ranked = [n.name for n in ours if part in n.partitions]
        allowed = max(limits.floor, math.floor(limits.max_share * len(members)))
        if limits.max_share > 0 and ranked.index(node) >= allowed:
            why = (
                f"partition {part}: {len(ranked)} of {len(members)} nodes drained by "
                f"nodecheck at once (limit {limits.max_share:.0%}, at least {limits.floor})"
            )
            return BreakerState(True, why, part, len(ranked) - 1, len(members))
    return BreakerState(False, "within limits")


def jitter(deadline: float, most_s: float = 2.0) -> None:
    """Spread a wave of simultaneous drains a little, within what the budget allows."""
    room = max(0.0, (deadline - time.monotonic()) / 4)
    time.sleep(random.uniform(0, min(most_s, room)))  # noqa: S311 (not for security)


# --- Slots: the breaker's limit held exactly, by slurmctld (nodecheck/slurm/claims.py) ---
#
# A node drains only once it holds a slot: a reservation slurmctld creates at most once
# under its name and ends by itself after the window. The rate limit is `max_drains`
# numbered slots (`nodecheck_breaker_<k>`); the share limit, where it could bind, slots per
# partition (`nodecheck_breaker_p_<partition>_<j>`). Choosing is pure (below); claiming is
# act's one call, and a refused claim means another node won that slot: re-read, choose
# again. Nothing is drained and then undone, so a wave cannot flap.

RATE_SLOT = "nodecheck_breaker_"
SHARE_SLOT = "nodecheck_breaker_p_"


@dataclass(frozen=True)
class Held:
    """A live slot: its name and the node that holds it."""

    name: str
    node: str


@dataclass(frozen=True)
class SlotChoice:
    """The slot to claim, or (slot None) the breaker open, with why."""

    slot: str | None
    state: BreakerState


def rate_slots(held: Iterable[Held]) -> list[Held]:
    return [h for h in held if h.name.startswith(RATE_SLOT) and h.name[len(RATE_SLOT) :].isdigit()]


def share_prefix(partition: str) -> str:
    return f"{SHARE_SLOT}{partition}_"


def choose_rate_slot(
    held: Iterable[Held],
    limits: BreakerLimits,
    tried: frozenset[str] = frozenset(),
    pick: Callable[[list[str]], str] = random.choice,
) -> SlotChoice:
    """A free rate slot, drawn at random among the free ones (a wave's nodes then rarely
    race for the same name; when two do, slurmctld gives it to one), or open when all
    `max_drains` are held: that many drains began within the window. `pick` draws (tests
    pass one that is not random)."""
    taken = {h.name for h in rate_slots(held)} | set(tried)
    free = [f"{RATE_SLOT}{k}" for k in range(limits.max_drains) if f"{RATE_SLOT}{k}" not in taken]
    if free:
        recent = limits.max_drains - len(free)
        return SlotChoice(pick(free), BreakerState(False, "within limits", recent=recent))
    why = (
        f"{limits.max_drains} nodes drained by nodecheck in the last {limits.window_min:g} min "
        f"(limit {limits.max_drains})"
    )
    return SlotChoice(None, BreakerState(True, why, recent=limits.max_drains))


def share_allowed(limits: BreakerLimits, total: int) -> int:
    return max(limits.floor, math.floor(limits.max_share * total))


def share_count(
    partition: str,
    members: frozenset[str],
    drained: Iterable[NodeInfo],
    held: Iterable[Held],
    node: str,
) -> tuple[int, int]:
    """(drains not holding a share slot, share slots held) in `partition`, this node not
    counted: nodecheck's drains (as slurmdbd or slurmctld shows them, judged by reason
    alone) and every slot holder in it (a slot's drain may not have reached slurmdbd yet)."""
    held, drained = list(held), list(drained)
    prefix = share_prefix(partition)
    # A holder drained under someone else's reason now (an admin took the drain over, or
    # drained it again) is the admin's: never counted. One not drained at all may be about
    # to drain (its claim came a moment ago) and is counted until its slot ends.
    admins = {n.name for n in drained if n.drained and not _ours(n)}
    share_holders = {h.node for h in held if h.name.startswith(prefix)} - admins
    others = {n.name for n in drained if _ours(n) and n.name in members}
    others |= {h.node for h in rate_slots(held) if h.node in members} - admins
    others -= share_holders | {node}
    return len(others), len(share_holders - {node})


def needs_share_slot(
    limits: BreakerLimits, total: int, counted: tuple[int, int], held: Iterable[Held]
) -> bool:
    """Can the rate limit alone keep the partition within its share? Every drain takes a
    rate slot first, so at most the free rate slots can be added to what is counted now
    (`held` includes this node's own rate slot; `counted` leaves this node out)."""
    if limits.max_share <= 0:
        return False
    if limits.max_drains <= 0:
        return True
    free = max(0, limits.max_drains - len(rate_slots(held)))
    return sum(counted) + 1 + free > share_allowed(limits, total)


def choose_share_slot(
    partition: str,
    total: int,
    counted: tuple[int, int],
    held: Iterable[Held],
    limits: BreakerLimits,
    tried: frozenset[str] = frozenset(),
) -> SlotChoice:
    """Slot j = the partition's count of nodecheck's drains now (drains + slots): nodes that
    read the same count race for the same name, and slurmctld lets one have it. The count
    does not change when a slot ends (its drain is counted instead), so a late reader
    still races for the same name."""
    drains, slots = counted
    allowed = share_allowed(limits, total)
    taken = {h.name for h in held} | set(tried)
    j = drains + slots
    # A name still held (by a node an admin resumed, say: its slot lives until Slurm ends
    # it) is stepped over; the limit is the count's, not the name's.
    while f"{share_prefix(partition)}{j}" in taken:
        j += 1
    if drains + slots >= allowed:
        why = (
            f"partition {partition}: {drains + slots} of {total} nodes already drained by "
            f"nodecheck (limit {limits.max_share:.0%}, at least {limits.floor})"
        )
        return SlotChoice(None, BreakerState(True, why, partition, drains + slots, total))
    state = BreakerState(False, "within limits", partition, drains + slots, total)
    return SlotChoice(f"{share_prefix(partition)}{j}", state)
