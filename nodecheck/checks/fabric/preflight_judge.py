"""fabric.preflight's one verdict, for every node of the allocation at once (pure).

The check hands `JUDGING` to the probe (nodecheck/probes/fabric/preflight.py, a layer below:
it cannot import this module); the coordinator calls `judge` with every pair's figures and
sends each node its own entry, so no node judges from figures of its own and all agree. The
rules:

- a node never joined (or a pair could not be measured): the preflight is incomplete, WARN
  on every node that joined, nobody FAILs (silence does not say whose fault it is);
- two nodes: one pair, no third node to say which end is slow: a pair slower one way than
  the other (below half of `fraction`), or below `min_bps`, WARNs both, drains neither;
- three or more: the ring pairs of pass 1 are classified against the healthy median (the
  upper median, `ringplan.classify`; with three nodes the fastest pair: the probe's
  `plan_of`, the same classification that planned its second pass); a suspect (slow with
  both ring neighbours) that is slow again in pass 2 with a cleared partner FAILs, with its
  figure against the median; a slow pair of two cleared nodes that stays slow WARNs both (a
  path, not a node); everyone else PASSes.

A node whose preflight could not finish (no listener, coordinator not reached, no verdict
from it) WARNs on its own: `incomplete`.

Bandwidth decides; latency is measured and reported (on plain sockets it is the kernel's
stack as much as the wire, too noisy to drain on).
"""

from __future__ import annotations

from typing import Any

from nodecheck.probes.fabric.preflight import Judging, NodeVerdict, PairFigure, plan_of
from nodecheck.probes.fabric.ringplan import Pair


def rate(bps: float) -> str:
    """Bytes per second as people read fabric figures (decimal units)."""
    for unit, size in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if bps >= size:
            return f"{bps / size:.3g} {unit}"
    return f"{bps:.0f} B/s"


def judge(
    nodes: list[str],
    joined: set[str],
    pass1: dict[Pair, PairFigure],
    pass2: dict[Pair, PairFigure],
    fraction: float,
    min_bps: float = 0.0,
) -> dict[str, NodeVerdict]:
    """Every joined node's verdict (see the module docstring)."""
    here = [n for n in nodes if n in joined]
    missing = [n for n in nodes if n not in joined]
    if missing:
        msg = (
            f"preflight incomplete: {_names(missing)} never joined "
            f"({len(here)} of {len(nodes)} nodes)"
        )
        return {n: NodeVerdict("WARN", msg, {"missing": missing}) for n in here}
    values: dict[str, Any] = {"nodes": len(nodes), "pairs": _pairs(nodes, pass1)}
    if pass2:
        values["second_pass"] = _pairs(nodes, pass2)
    broken = [(p, f) for p, f in {**pass1, **pass2}.items() if f.error]
    if broken:
        (a, b), fig = broken[0]
        msg = f"preflight incomplete: pair {nodes[a]}-{nodes[b]} not measured ({fig.error})"
        return {n: NodeVerdict("WARN", msg, values) for n in nodes}
    if len(nodes) == 2:
        return _two(nodes, pass1, fraction, min_bps, values)
    plan = plan_of({p: f.bps for p, f in pass1.items()}, fraction, len(nodes))
    reference = plan.reference
    values["median_bps"] = round(reference)
    lat = sorted(f.latency_us for f in pass1.values())
    values["median_latency_us"] = round(lat[len(lat) // 2], 1)
    limit = fraction * reference
    confirmed = sorted(
        s for s in plan.suspects if any(s in p and f.bps < limit for p, f in pass2.items())
    )
    slow_links = [
        p for p in plan.slow
        if all(n in plan.cleared for n in p) and p in pass2 and pass2[p].bps < limit
    ]  # fmt: skip
    values["slow_nodes"] = [nodes[n] for n in confirmed]
    values["slow_links"] = [f"{nodes[a]}-{nodes[b]}" for a, b in slow_links]
    which = "best pair" if len(nodes) == 3 else "median"
    summary = (
        f"{len(nodes)} nodes, ring pairs at {rate(reference)} ({which}), "
        f"latency {values['median_latency_us']:.0f} us"
    )
    if min_bps and reference < min_bps:
        msg = f"{summary}: the allocation's median is below {rate(min_bps)}"
        return {n: NodeVerdict("WARN", msg, values) for n in nodes}
    out: dict[str, NodeVerdict] = {}
    for rank, node in enumerate(nodes):
        if rank in confirmed:
            # its best figure with a cleared partner: the honest number for the drain reason
            best_p, best = max(
                ((p, f) for p, f in pass2.items() if rank in p), key=lambda pf: pf[1].bps
            )
            partner = nodes[best_p[0] if best_p[1] == rank else best_p[1]]
            healthy = "healthy pair" if len(nodes) == 3 else "healthy median"
            msg = (
                f"slow fabric: {rate(best.bps)} with {partner} (cleared), allocation's "
                f"{healthy} {rate(reference)} (below {fraction:.0%})"
            )
            out[node] = NodeVerdict("FAIL", msg, {**values, "bps": round(best.bps)})
            continue
        mine = [p for p in slow_links if rank in p]
        if mine:
            a, b = mine[0]
            peer = nodes[b if a == rank else a]
            msg = (
                f"slow path to {peer} ({rate(pass2[mine[0]].bps)} vs median "
                f"{rate(reference)}), both nodes fast with others: switch port or route"
            )
            out[node] = NodeVerdict("WARN", msg, values)
            continue
        named = f"; slow node(s): {_names(values['slow_nodes'])}" if confirmed else ""
        out[node] = NodeVerdict("PASS", summary + named, values)
    return out


def incomplete(why: str) -> NodeVerdict:
    """This node's verdict when its preflight could not finish: silence, a port another job
    holds, a coordinator gone, say nothing about whose fault it is, so never a FAIL."""
    return NodeVerdict("WARN", f"preflight incomplete: {why}")


JUDGING = Judging(judge=judge, incomplete=incomplete)


def _two(
    nodes: list[str], pass1: dict[Pair, PairFigure], fraction: float, min_bps: float,
    values: dict[str, Any],
) -> dict[str, NodeVerdict]:  # fmt: skip
    fig = pass1[(0, 1)]
    values["median_bps"] = round(fig.bps)
    values["median_latency_us"] = round(fig.latency_us, 1)
    faster = max(fig.forward_bps, fig.backward_bps)
    there = f"{nodes[0]}->{nodes[1]} {rate(fig.forward_bps)}, back {rate(fig.backward_bps)}"
    # One way against the other is the only comparison two nodes have, and on a loaded host
    # a direction can lag by half: only a lag past half of `fraction` counts (a throttled
    # link is slower by orders of magnitude).
    if fig.bps < fraction / 2 * faster or (min_bps and fig.bps < min_bps):
        msg = f"slow pair ({there}); two nodes cannot say which end is slow"
        return {n: NodeVerdict("WARN", msg, values) for n in nodes}
    msg = f"2 nodes, {there}, latency {fig.latency_us:.0f} us"
    return {n: NodeVerdict("PASS", msg, values) for n in nodes}


def _pairs(nodes: list[str], figures: dict[Pair, PairFigure]) -> dict[str, Any]:
    return {
        f"{nodes[a]}-{nodes[b]}": (
            {"error": f.error}
            if f.error
            else {"bps": round(f.bps), "latency_us": round(f.latency_us, 1)}
        )
        for (a, b), f in sorted(figures.items())
    }


def _names(nodes: list[str]) -> str:
    return ", ".join(nodes[:4]) + (f" +{len(nodes) - 4} more" if len(nodes) > 4 else "")
