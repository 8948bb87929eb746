"""Rack consistency: the nodes of one NVLink domain must agree. A pure function over many
nodes' readings names the node that disagrees with its domain (the odd tray), not the rack.

A reading is what one node's `nodecheck run --check 'gpu.fabric' --check 'gpu.nvlink' --json`
says (run it on every node of the rack with srun or pdsh; no node state or controller call
is involved): each GPU's fabric state, cluster UUID and clique (gpu.fabric's values), the
IMEX verdict, and whether the node's NVLinks are all up (gpu.nvlink). The domain of a node is
Slurm's block of it (topology/block: probes/slurm_topology.py) when a topology file is given,
else the domain gpu.fabric read from it (its `topology_file`), else all readings are one.

Within a domain, the key most nodes' GPUs registered in (cluster UUID, clique) is the
domain's. A node is named when it disagrees: a GPU in another domain or clique, GPUs split
among several, a registration not completed, an NVLink down, IMEX failing. When no key has
a strict majority of the domain's nodes, or most nodes disagree, the domain itself is at
fault (its NVLink switch trays, NMX-C) and no node is singled out.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, int | None]  # (cluster UUID, clique)
ALL = "(all readings)"


@dataclass(frozen=True)
class Reading:
    """One node's NVLink domain as its own run saw it."""

    node: str
    domain: str | None = None  # the block gpu.fabric read from Slurm's topology file
    keys: frozenset[Key] = frozenset()  # every (cluster UUID, clique) its registered GPUs gave
    problems: tuple[str, ...] = ()  # what the node itself already found wrong


@dataclass(frozen=True)
class Odd:
    node: str
    domain: str
    why: str


@dataclass(frozen=True)
class DomainVerdict:
    domain: str
    nodes: tuple[str, ...]
    key: Key | None  # the domain's (cluster UUID, clique), None when no majority
    odd: tuple[Odd, ...] = ()
    whole: str = ""  # the domain's own fault, when no node can be singled out
    missing: tuple[str, ...] = field(default_factory=tuple)  # in the block, no reading


def judge(
    readings: Iterable[Reading], blocks: Mapping[str, str] | None = None
) -> list[DomainVerdict]:
    """Group the readings by domain (`blocks`: node -> block, Slurm's view; else each
    reading's own) and judge each domain. Pure."""
    groups: dict[str, list[Reading]] = {}
    for reading in readings:
        name = (blocks or {}).get(reading.node) if blocks else None
        groups.setdefault(name or reading.domain or ALL, []).append(reading)
    verdicts = [_judge_domain(name, members) for name, members in sorted(groups.items())]
    if blocks:
        seen = {r.node for members in groups.values() for r in members}
        verdicts = [
            DomainVerdict(
                v.domain,
                v.nodes,
                v.key,
                v.odd,
                v.whole,
                tuple(sorted(n for n, b in blocks.items() if b == v.domain and n not in seen)),
            )
            for v in verdicts
        ]
    return verdicts


def _judge_domain(name: str, members: list[Reading]) -> DomainVerdict:
    nodes = tuple(sorted(r.node for r in members))
    single = Counter(next(iter(r.keys)) for r in members if len(r.keys) == 1)
    key: Key | None = None
    if single:
        (top, count), *rest = single.most_common()
        if count * 2 > len(members) and not (rest and rest[0][1] == count):
            key = top
    odd = tuple(o for r in members if (o := _odd(name, r, key)) is not None)
    if key is None:
        seen = ", ".join(f"{u or 'none'} clique {c}" for u, c in sorted(single, key=str)) or "none"
        whole = f"no NVLink domain shared by most of its {len(members)} nodes (seen: {seen})"
        return DomainVerdict(name, nodes, None, whole=whole)
    if len(odd) * 2 > len(members):
        whole = f"{len(odd)} of {len(members)} nodes disagree: the domain, not a node"
        return DomainVerdict(name, nodes, key, whole=whole)
    return DomainVerdict(name, nodes, key, odd)


def _odd(domain: str, reading: Reading, key: Key | None) -> Odd | None:
    why: list[str] = list(reading.problems)
    if len(reading.keys) > 1:
        split = "; ".join(f"{u} clique {c}" for u, c in sorted(reading.keys, key=str))
        why.append(f"its GPUs are in several NVLink domains or cliques ({split})")
    elif key is not None and reading.keys and next(iter(reading.keys)) != key:
        ((uuid, clique),) = reading.keys
        if uuid != key[0]:
            why.append(f"NVLink domain {uuid}, the rest of {domain}: {key[0]}")
        else:
            why.append(f"clique {clique}, the rest of {domain}: clique {key[1]}")
    elif not reading.keys and not reading.problems:
        why.append("no GPU registered in an NVLink domain")
    return Odd(reading.node, domain, "; ".join(why)) if why else None


# -- readings from `nodecheck run --json` documents -------------------------------------


def readings_from_runs(docs: Iterable[Mapping[str, Any]]) -> list[Reading]:
    """One Reading per node (its last document wins) from `nodecheck run --json` output."""
    by_node: dict[str, Reading] = {}
    for doc in docs:
        node = str(doc.get("node") or "")
        if node:
            by_node[node] = _reading(node, doc.get("results") or [])
    return list(by_node.values())


def _reading(node: str, results: Iterable[Mapping[str, Any]]) -> Reading:
    keys: set[Key] = set()
    problems: list[str] = []
    domain: str | None = None
    for result in results:
        check, status = result.get("check"), result.get("status")
        component, message = str(result.get("component", "")), str(result.get("message", ""))
        if check == "gpu.nvlink" and status in ("FAIL", "WARN"):
            problems.append(f"{component}: {message}")
        if check != "gpu.fabric":
            continue
        if (
            status in ("FAIL", "WARN", "ERROR")
            and "NVLink domain" not in message
            and ("clique" not in message)
        ):
            problems.append(f"{component}: {message}")
        for values in _per_gpu_values(component, result.get("values") or {}):
            domain = values.get("domain") or domain
            if values.get("state") == "completed" and values.get("cluster_uuid"):
                keys.add((str(values["cluster_uuid"]), values.get("clique_id")))
    return Reading(node, domain, frozenset(keys), tuple(problems))


def _per_gpu_values(component: str, values: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """A problem result carries one GPU's values; a folded PASS carries {gpuN: values}."""
    if "state" in values:
        yield values
        return
    for name, inner in values.items():
        if name.startswith("gpu") and isinstance(inner, Mapping):
            yield inner


def parse_documents(text: str) -> list[dict[str, Any]]:
    """JSON documents one after another (what `srun nodecheck run --json` prints, one per
    node), or a JSON list of them."""
    decoder = json.JSONDecoder()
    docs: list[dict[str, Any]] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return docs
        value, pos = decoder.raw_decode(text, pos)
        docs.extend(value if isinstance(value, list) else [value])
