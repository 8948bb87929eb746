"""The cluster as `nodecheck report` sees it: from the cluster's own records, not from
every node's table entry nor any node's state directory.

With slurmdbd: the drained nodes with their reasons and times (slurmdbd's open drain
events, one sacctmgr call), how often each was drained within the flap window (its drain
events since then, one more), the partitions and their members (`scontrol show partition`,
one call whose size grows with the partitions' host lists, not the node table) and the
breaker's live slots (`scontrol show reservation`). Nothing here reads a node's SQLite: that
stays the node's own record.

Without slurmdbd (sacctmgr refuses, or no accounting): the node table, one read, as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from nodecheck.core.node import NodeInfo
from nodecheck.slurm import SlurmError


@dataclass(frozen=True)
class ClusterView:
    # Every node the report needs to know about. From slurmdbd: each partition's members,
    # with the drained ones' reason, time and user (the others' states unknown: "?").
    nodes: list[NodeInfo]
    source: str  # "slurmdbd" or "node table"
    # node -> nodecheck's drains within the flap window (slurmdbd only; else None)
    drains_in_window: dict[str, int] | None = None
    slots: list[Any] = field(default_factory=list)  # the breaker's live slots (claims.Claim)
    why_not_dbd: str = ""


def read_cluster(config: Any, window_s: float, now: float) -> ClusterView:
    """The report's picture of the cluster: slurmdbd's where it answers, else the node
    table's. Raises SlurmError when slurmctld cannot be read at all."""
    from nodecheck.core.node import drain_owner
    from nodecheck.run.act import backend_for
    from nodecheck.slurm.dbd import DbdReader

    backend = backend_for(config, os.environ)
    slots_of = getattr(backend, "claims", None)
    partitions_of = getattr(backend, "partitions", None)
    if partitions_of is None or slots_of is None:
        return ClusterView(backend.list_nodes(), "node table", why_not_dbd="backend")
    scontrol = str(config.scontrol)
    conf = config.slurm_conf or os.environ.get("SLURM_CONF") or None
    reader = DbdReader(os.path.join(os.path.dirname(scontrol), "sacctmgr"), conf)
    try:
        open_drains = reader.open_drains()
        recent = reader.drains_since(now - window_s)
    except SlurmError as exc:
        return ClusterView(backend.list_nodes(), "node table", why_not_dbd=str(exc))
    from nodecheck.hostlist import expand
    from nodecheck.slurm import format_reason_time

    drained = {
        e.node: NodeInfo(
            e.node,
            ("DRAIN",),
            e.reason,
            e.user.split("(")[0],
            format_reason_time(int(e.start)),
        )
        for e in open_drains
    }
    member_of: dict[str, list[str]] = {}
    for part in partitions_of():
        for name in expand(part.nodes) if part.nodes else []:
            member_of.setdefault(name, []).append(part.name)
    names = sorted(set(member_of) | set(drained))
    nodes = []
    for name in names:
        base = drained.get(name, NodeInfo(name, ("?",)))
        nodes.append(
            NodeInfo(
                base.name,
                base.states,
                base.reason,
                base.reason_user,
                base.reason_time,
                tuple(member_of.get(name, ())),
            )
        )
    counts: dict[str, int] = {}
    for event in recent:
        info = NodeInfo(event.node, ("DRAIN",), event.reason)
        if event.start >= now - window_s and drain_owner(info, None).ours:
            counts[event.node] = counts.get(event.node, 0) + 1
    try:
        slots = slots_of()
    except SlurmError:
        slots = []
    return ClusterView(nodes, "slurmdbd", counts, slots)
