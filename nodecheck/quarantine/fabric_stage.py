"""The fabric stage of a validate run: deep.fabric across the quarantined nodes in one job.

deep.fabric measures among the nodes of ONE job (every node runs it at once; rank = place
in the job's node list). A validation job per node can never run it, so, where the
validation level selects deep.fabric, validate works in two stages:

1. each node's own validation job (as ever); a node that passes it waits in FABRIC_WAIT,
   still in the reservation, its pass not yet recorded as the end of the validation;
2. once no node of the run is still on its own way (settling, validating, rebooting), one
   multi-node job over the waiting nodes (at least two, or one with partners) runs
   deep.fabric on each of them at once (`validate-job --fabric-batch`: its batch step starts
   one `validate-job --fabric` task per node with srun). Each quarantined node judges
   and acts on its own result as a validation job does (drain with deep.fabric's
   figure, the ladder, the breaker); the batch step writes every judged node's exit code
   into the job's AdminComment, and the loop reads each node's verdict there.

A lone waiting node is paired with known-good partners (`validate_fabric_partners`): idle
nodes, put into the reservation for the job and taken out after it. A partner is never
judged, drained or resumed: it only gives the quarantined node someone to measure
against, and deep.fabric's second pass names the slow node, so a partner that is itself
slow fails nobody. Without a partner (the others failed their own jobs, no partner is
idle), the lone node's fabric job runs anyway, deep.fabric SKIPs there, and the node's
result says that deep.fabric did not run. A run of one node without partners has no
fabric stage at all.

Everything here is pure: the loop (loop.py) gathers, this decides.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from nodecheck.core.node import NodeInfo
from nodecheck.quarantine.select import is_idle
from nodecheck.quarantine.validation import NodeValidation, Phase

CHECK_ID = "deep.fabric"
# The AdminComment the batch step writes, e.g. "nodecheck deep.fabric verdicts: n1=0 n2=1".
VERDICTS_HEAD = "nodecheck deep.fabric verdicts:"
# The line each node's task prints on its stdout for the batch step.
TASK_LINE = "nodecheck-fabric-verdict"
_PAIR = re.compile(r"^(?P<node>[A-Za-z0-9][A-Za-z0-9._-]{0,127})=(?P<code>\d{1,3})$")
# Phases in which a node is still on its own way: the fabric stage waits for them.
_OWN_WAY = (Phase.SETTLING, Phase.VALIDATING, Phase.REBOOTING, Phase.FABRIC)


@dataclass(frozen=True)
class FabricPlan:
    """The fabric job to submit now (none when `judged` is empty)."""

    judged: tuple[str, ...] = ()  # quarantined nodes the job judges
    partners: tuple[str, ...] = ()  # known-good nodes added only to measure against
    note: str = ""  # why deep.fabric will not measure (a lone node): said in its result

    @property
    def start(self) -> bool:
        return bool(self.judged)


def waiting(runs: Iterable[NodeValidation]) -> list[str]:
    """The nodes ready for the fabric stage; none while any node is still on its own way
    (a node back from a reboot joins the next round, not a half-started one)."""
    runs = list(runs)
    if any(r.phase in _OWN_WAY for r in runs):
        return []
    return sorted(r.node for r in runs if r.phase is Phase.FABRIC_WAIT)


def stage_possible(nodes: int, partners: Sequence[str]) -> bool:
    """Can this run's fabric stage ever measure? Two nodes, or one and partners."""
    return nodes >= 2 or (nodes == 1 and bool(partners))


def needs_table(ready: Sequence[str], partners: Sequence[str]) -> bool:
    """Does planning need the node table (to find an idle partner)? Only for a lone node."""
    return len(ready) == 1 and bool(partners)


def plan_fabric(
    ready: Sequence[str],
    partners: Sequence[str],
    table: Mapping[str, NodeInfo] | None,
    partner_count: int,
    busy: Iterable[str] = (),
) -> FabricPlan:
    """Two or more ready nodes measure among themselves; a lone one takes up to
    `partner_count` idle partners (never one of `busy`: the run's own nodes, or nodes
    already in the reservation). With none, the lone node's job runs anyway: deep.fabric
    SKIPs a single-node job, and the job records the validation's end in its history
    (its own job, which the fabric stage was to follow, did not)."""
    ready = sorted(ready)
    if len(ready) != 1:
        return FabricPlan(judged=tuple(ready))
    if not partners:
        note = "deep.fabric not run: no other node to measure against (validate_fabric_partners)"
        return FabricPlan(judged=tuple(ready), note=note)
    taken = set(busy) | set(ready)
    free = [
        p for p in partners
        if p not in taken and table is not None and p in table and is_idle(table[p])
    ]  # fmt: skip
    chosen = tuple(free[: max(1, partner_count)])
    if not chosen:
        note = "deep.fabric not run: no node of validate_fabric_partners is idle"
        return FabricPlan(judged=tuple(ready), note=note)
    return FabricPlan(judged=tuple(ready), partners=chosen)


def rail_rounds(rails: int, secret: str) -> list[dict[str, str]]:
    """The environment of each deep.fabric round of a node's fabric task. deep.fabric is
    one rank per node, on one device: with `rails` (validate_fabric_rails) > 0 the task
    runs it once per GPU index, round i with CUDA_VISIBLE_DEVICES=i (so NCCL uses GPU i
    and the NIC nearest to it: rail i on a rail-optimised node), each round under a secret
    of its own derived from the run's (a rank late from round i never meets round i+1's
    keys). 0: one round on the device the check picks."""
    if rails <= 0:
        return [{}]
    return [
        {
            "CUDA_VISIBLE_DEVICES": str(rail),
            "NODECHECK_FABRIC_SECRET": hashlib.sha256(f"{secret}:rail{rail}".encode()).hexdigest(),
        }
        for rail in range(rails)
    ]


def job_nodes(plan: FabricPlan) -> list[str]:
    """Every node of the fabric job (judged and partners), in a stable order."""
    return sorted({*plan.judged, *plan.partners})


def format_verdicts(codes: Mapping[str, int]) -> str:
    """The AdminComment of a finished fabric job: each judged node's exit code."""
    pairs = " ".join(f"{node}={code}" for node, code in sorted(codes.items()))
    return f"{VERDICTS_HEAD} {pairs}".rstrip()


def parse_verdicts(comment: str) -> dict[str, int]:
    """node -> exit code from a fabric job's AdminComment ({} when it is not one)."""
    if not comment.startswith(VERDICTS_HEAD):
        return {}
    out = {}
    for word in comment[len(VERDICTS_HEAD) :].split():
        found = _PAIR.match(word)
        if found:
            out[found["node"]] = int(found["code"])
    return out


def task_line(node: str, code: int) -> str:
    return f"{TASK_LINE} {node} {code}"


def parse_task_lines(text: str, nodes: Iterable[str]) -> dict[str, int]:
    """The tasks' verdict lines (srun's merged stdout), for the job's own `nodes` only:
    a line naming any other node is not a verdict of this job."""
    wanted, out = set(nodes), {}
    for line in text.splitlines():
        words = line.split()
        if (
            len(words) == 3
            and words[:1] == [TASK_LINE]
            and words[1] in wanted
            and words[2].isdigit()
        ):
            out[words[1]] = int(words[2])
    return out


def level_runs_fabric(patterns: Sequence[str], registry: Mapping[str, object]) -> bool:
    """Does a validation level's check list select deep.fabric?"""
    from nodecheck.checks.registry import match_ids

    try:
        return CHECK_ID in match_ids(tuple(patterns), registry)
    except KeyError:
        return False
