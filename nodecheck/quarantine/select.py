"""Which nodes `nodecheck validate --idle` or `--pending` takes: pure functions of what
Slurm says about the nodes and when each was last validated.

--idle (cron): idle nodes, never-validated first, then the longest since their last
validation, without taking more than `max_share` of any partition at once (nodes already
in the reservation count against it).
--pending: nodes nodecheck drained that may come back (not held for replacement or as
flapping): their validation decides.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from nodecheck.core.node import NodeInfo, drain_owner
from nodecheck.core.reason import is_flapping_message, parse_reason

# Flags that make an IDLE node unavailable or already spoken for.
_BUSY_FLAGS = {"DRAIN", "DRAINED", "DRAINING", "DOWN", "RESERVED", "MAINT", "FAIL", "POWER_DOWN"}


def is_idle(info: NodeInfo) -> bool:
    states = set(info.states)
    return (
        "IDLE" in states
        and not states & _BUSY_FLAGS
        and not any(s.startswith(("REBOOT", "POWER")) for s in states)
    )


def pick_idle(
    nodes: Iterable[NodeInfo],
    last_validated: Mapping[str, float],
    max_share: float,
    already_reserved: Iterable[str] = (),
) -> list[str]:
    nodes = list(nodes)
    reserved = set(already_reserved)
    members: dict[str, int] = {}
    taken: dict[str, int] = {}
    for info in nodes:
        for part in info.partitions:
            members[part] = members.get(part, 0) + 1
            taken[part] = taken.get(part, 0) + (info.name in reserved)
    budget = {part: math.floor(max_share * count) for part, count in members.items()}
    candidates = sorted(
        (n for n in nodes if is_idle(n) and n.name not in reserved and n.partitions),
        key=lambda n: (n.name in last_validated, last_validated.get(n.name, 0.0), n.name),
    )
    chosen = []
    for info in candidates:
        if all(taken[p] < budget[p] for p in info.partitions):
            chosen.append(info.name)
            for part in info.partitions:
                taken[part] += 1
    return chosen


def pick_pending(nodes: Iterable[NodeInfo]) -> list[str]:
    chosen = []
    for info in nodes:
        # The controller's view, no state of the nodes': only a reason that is whole
        # nodecheck's grammar (core/node.py); an admin's edit of one is the admin's.
        if not drain_owner(info, None).ours:
            continue
        parsed = parse_reason(info.reason)
        if parsed is not None and (
            parsed.remedy == "replace" or is_flapping_message(parsed.message)
        ):
            continue
        chosen.append(info.name)
    return sorted(chosen)
