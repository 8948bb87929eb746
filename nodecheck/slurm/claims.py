"""The circuit breaker's slots in slurmctld: reservations it creates and refuses twice.

slurmctld serialises reservation creation and refuses a name that exists ("Duplicate
reservation name"), and it ends a reservation by itself at its EndTime. So a numbered
reservation `nodecheck_breaker_<k>` is a slot only one node can hold, held for the
breaker's window and then freed by Slurm, with nothing of ours to clean up. A node drains
only once it holds a slot: the breaker's limit is the number of slots (run/breaker.py
decides which to try). This module builds the scontrol argument lists and reads the
answers; both backends use it.

A claim reserves one unit of the license `nodecheck_breaker` and no node
(`Flags=ANY_NODES`, Slurm's license-only reservation): no job is affected, since none asks
for that license. The site declares it once in slurm.conf (`Licenses=nodecheck_breaker:1000`,
slurm.conf.example). The claiming node's name rides in the reservation's `Features=`, which a
reservation without nodes does not use, so that the breaker knows who holds which slot.

Where the license is not declared, slurmctld answers "Invalid license specification" and
the claim reserves the claiming node itself instead (`Nodes=<node>`, `Flags=IGNORE_JOBS,
OVERLAP`): the node is about to be drained, but should it be resumed within the window, no
job outside a reservation starts on it until the claim ends (measured on 22.05: a job in the
quarantine loop's reservation still runs there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nodecheck.slurm import SlurmError, checked_node_name

PREFIX = "nodecheck_breaker_"
LICENSE = "nodecheck_breaker"
LICENSE_FLAGS = "ANY_NODES"  # a reservation of licenses alone, no node
# Without the license: IGNORE_JOBS: the node may be running the job whose prolog failed;
# OVERLAP: the node may already be in another reservation (the quarantine loop's, a site's).
NODE_FLAGS = "IGNORE_JOBS,OVERLAP"
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DUPLICATE = "Duplicate reservation name"
BAD_LICENSE = "Invalid license specification"


@dataclass(frozen=True)
class Claim:
    """One breaker slot as slurmctld shows it."""

    name: str
    nodes: str  # the holder (Nodes= of a node claim, Features= of a license claim)
    start: str  # local ISO time, as scontrol prints it
    end: str


@dataclass(frozen=True)
class PartitionInfo:
    name: str
    nodes: str  # Slurm's host list expression, e.g. "n[1-10000]"
    total: int  # TotalNodes


def checked_slot_name(name: str) -> str:
    if not name.startswith(PREFIX) or _SAFE.fullmatch(name) is None:
        raise SlurmError(f"refusing reservation name {name!r}")
    return name


def checked_partition(name: str) -> str:
    if _SAFE.fullmatch(name) is None:
        raise SlurmError(f"refusing partition name {name!r}")
    return name


def show_claims_args(scontrol: str) -> list[str]:
    """All reservations, one a line: the answer grows with the reservations, not the nodes
    (a claim's node list is its one node)."""
    return [scontrol, "show", "-o", "reservation"]


def claim_args(
    scontrol: str, name: str, node: str, minutes: int, license: bool = True
) -> list[str]:
    """Create slot `name` for `node` for `minutes`: a license-only reservation naming the
    node in Features= (license=True), else a reservation of the node itself."""
    node = checked_node_name(node)
    what = (
        [f"Licenses={LICENSE}:1", f"Features={node}", f"Flags={LICENSE_FLAGS}"]
        if license
        else [f"Nodes={node}", f"Flags={NODE_FLAGS}"]
    )
    return [
        scontrol,
        "create",
        "reservation",
        f"ReservationName={checked_slot_name(name)}",
        "Users=root",
        "StartTime=now",
        f"Duration={max(1, int(minutes))}",
        *what,
    ]


def release_args(scontrol: str, name: str) -> list[str]:
    return [scontrol, "delete", "reservation", checked_slot_name(name)]


def show_partition_args(scontrol: str, name: str | None = None) -> list[str]:
    """One partition (name) or all of them: the answer grows with the partitions and their
    host lists (`n[1-10000]`), never with the node table."""
    args = [scontrol, "show", "-o", "partition"]
    return [*args, checked_partition(name)] if name is not None else args


def _fields(line: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            out.setdefault(key, value)
    return out


def parse_claims(text: str) -> list[Claim]:
    """`scontrol show -o reservation`: the breaker's slots only (others are left out)."""
    out: list[Claim] = []
    for line in text.splitlines():
        fields = _fields(line)
        name = fields.get("ReservationName", "")
        if not name.startswith(PREFIX):
            continue
        nodes, start, end = (fields.get(k, "") for k in ("Nodes", "StartTime", "EndTime"))
        if nodes in ("", "(null)"):  # a license claim: the holder is in Features=
            nodes = fields.get("Features", "")
        out.append(Claim(name, "" if nodes == "(null)" else nodes, start, end))
    return out


def parse_partitions(text: str) -> list[PartitionInfo]:
    """`scontrol show -o partition`: every partition, its host list and size."""
    out = []
    for line in text.splitlines():
        name = _fields(line).get("PartitionName")
        if name:
            out.append(parse_partition(line, name))
    return out


def parse_partition(text: str, name: str) -> PartitionInfo:
    for line in text.splitlines():
        fields = _fields(line)
        if fields.get("PartitionName") != name:
            continue
        total = fields.get("TotalNodes", "")
        if not total.isdigit():
            raise SlurmError(f"partition {name}: no TotalNodes in {line[:200]!r}")
        nodes = fields.get("Nodes", "")
        return PartitionInfo(name, "" if nodes == "(null)" else nodes, int(total))
    raise SlurmError(f"partition {name!r} not known to Slurm")


def is_duplicate(error: str) -> bool:
    """Did slurmctld refuse the claim because another node holds that slot?"""
    return DUPLICATE.lower() in error.lower()


def is_bad_license(error: str) -> bool:
    """Did slurmctld refuse the claim because slurm.conf declares no nodecheck_breaker?"""
    return BAD_LICENSE.lower() in error.lower()
