"""The deep tier's judgement: measured figures against expected ones. Pure functions.

Two references, in this order:
1. the model's datasheet figure (`expected.py`, or the check's `expected` option): each
   device must reach `min_fraction` of it;
2. for a model not in the table: the node's own median device. One slow GPU among eight
   is the finding, so each must reach `median_fraction` of the median. With fewer than
   three devices a median names nobody (two devices cannot tell which one is slow), so the
   figures are reported and pass.
A device that could not be measured is an ERROR (nodecheck could not judge), never a FAIL.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from nodecheck.core.results import CheckResult, Status


def significant(value: float) -> float:
    """A figure to six significant digits: a CPU's TFLOP/s (1e-5) must not round to 0."""
    return float(f"{value:.6g}")


SDC = "deep.sdc"
FABRIC = "deep.fabric"
MIN_FOR_MEDIAN = 3  # devices needed before "below the median" can name one of them


@dataclass(frozen=True)
class Figure:
    """One measured figure of one component; `value` None with `error` when it failed."""

    component: str
    value: float | None
    error: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)  # more to carry in the result


@dataclass(frozen=True)
class Reference:
    """What a figure is judged against: a datasheet figure (or none), and the fractions."""

    expected: float | None
    source: str  # e.g. "H100 SXM datasheet" (named in messages)
    min_fraction: float
    median_fraction: float


def _fmt(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def judge(
    check_id: str, metric: str, unit: str, figures: Iterable[Figure], ref: Reference
) -> list[CheckResult]:
    """One result per figure: PASS, FAIL (below the reference) or ERROR (not measured)."""
    figures = list(figures)
    measured = [f.value for f in figures if f.value is not None]
    median = statistics.median(measured) if len(measured) >= MIN_FOR_MEDIAN else None
    out = []
    for fig in figures:
        values: dict[str, Any] = {**fig.values, "metric": metric, "unit": unit}
        if fig.value is None:
            msg = f"{metric}: not measured: {fig.error or 'no figure'}"
            out.append(CheckResult(check_id, Status.ERROR, msg, fig.component, values))
            continue
        values["measured"] = significant(fig.value)
        shown = f"{metric} {_fmt(fig.value)} {unit}"
        if ref.expected:
            share = fig.value / ref.expected
            values.update(
                expected=ref.expected, source=ref.source, fraction=round(share, 3),
                min_fraction=ref.min_fraction,
            )  # fmt: skip
            ok = share >= ref.min_fraction
            msg = f"{shown} = {share:.0%} of {_fmt(ref.expected)} ({ref.source})"
            if not ok:
                msg += f", below {ref.min_fraction:.0%}"
        elif median is not None:
            share = fig.value / median if median > 0 else 1.0
            values.update(
                node_median=significant(median), fraction=round(share, 3),
                median_fraction=ref.median_fraction,
            )  # fmt: skip
            ok = share >= ref.median_fraction
            msg = f"{shown} = {share:.0%} of the node's median {_fmt(median)}"
            if not ok:
                msg += f", below {ref.median_fraction:.0%} ({ref.source or 'no expected figure'})"
        else:
            ok = True
            msg = f"{shown} ({ref.source or 'no expected figure'}; too few devices to compare)"
        status = Status.PASS if ok else Status.FAIL
        out.append(CheckResult(check_id, status, msg, fig.component, values))
    return out


def merge_by_component(check_id: str, results: Iterable[CheckResult]) -> list[CheckResult]:
    """Several metrics of one component (bf16/fp16/tf32 of gpu3) as one result: the worst
    status; the messages of that status joined; every metric's values kept under its name."""
    grouped: dict[str, list[CheckResult]] = {}
    for result in results:
        grouped.setdefault(result.component, []).append(result)
    merged = []
    for component, parts in grouped.items():
        worst = max(r.status for r in parts)
        message = "; ".join(r.message for r in parts if r.status is worst)
        values = {str(r.values.get("metric", i)): r.values for i, r in enumerate(parts)}
        merged.append(CheckResult(check_id, worst, message, component, values))
    return merged


def refused(check_id: str, component: str, pids: list[int]) -> CheckResult:
    """A device that runs someone else's compute processes is not measured (and not failed):
    measuring would disturb their job and their load would spoil our figures."""
    shown = ", ".join(map(str, pids[:5])) + (f" (+{len(pids) - 5} more)" if len(pids) > 5 else "")
    msg = f"not measured: in use by {len(pids)} compute process(es) of others (pids {shown})"
    return CheckResult(check_id, Status.SKIP, msg, component, {"refused": True, "pids": pids})


# --- sustained load: what the GPU holds for seconds, and what NVML said throttled it ------
# A hardware slowdown while loaded (HW slowdown, HW thermal, power brake) is the board or
# its cooling failing: FAIL. A software thermal slowdown, or a rate that fell by more than
# `max_drop` over the phase, is a GPU running hot or a capped board: WARN, with the figures.
# SW power capping under full load is a GPU at its power limit, as designed: reported only.

HW_THROTTLE = ("hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")
SW_THROTTLE = ("sw_thermal_slowdown",)


@dataclass(frozen=True)
class Held:
    """One device's sustained phase: its window rates, the settled rate (what is judged),
    how far it fell, and the clock-event reasons NVML reported while it was loaded."""

    component: str
    windows: Sequence[float]
    settled: float
    drop: float
    throttle: Sequence[str] = ()


def judge_sustained(
    check_id: str,
    metric: str,
    unit: str,
    held: Sequence[Held],
    ref: Reference,
    *,
    max_drop: float,
    seconds: float,
) -> list[CheckResult]:
    """The settled rate judged as any figure (datasheet share, or the node's median), then
    throttling under load: HW reasons FAIL, SW thermal or a drop beyond max_drop WARN."""
    figures = [
        Figure(h.component, h.settled, values={
            "windows": [significant(w) for w in h.windows], "drop": round(h.drop, 3),
            "throttle": list(h.throttle), "seconds": round(seconds, 1),
        })
        for h in held
    ]  # fmt: skip
    out = []
    for result, h in zip(judge(check_id, f"sustained {metric}", unit, figures, ref), held,
                         strict=True):  # fmt: skip
        hardware = [r for r in h.throttle if r in HW_THROTTLE]
        software = [r for r in h.throttle if r in SW_THROTTLE]
        message, status = result.message + f" over {seconds:.0f} s", result.status
        if hardware:
            status = max(status, Status.FAIL)
            message += f"; clocks throttled under load: {', '.join(hardware)}"
        elif status is Status.PASS and (software or (h.drop > max_drop and h.component != "cpu")):
            # A CPU's rate falls whenever another process takes its cores (a shared node, a
            # busy CI machine): that is no throttling, so only a GPU's drop WARNs.
            status = Status.WARN
            why = software or [f"rate fell {h.drop:.0%} (more than {max_drop:.0%})"]
            message += f"; {', '.join(why)}"
        out.append(replace(result, status=status, message=message[:300]))
    return out


# --- deep.sdc: digests ------------------------------------------------------------------
# Within one GPU model every digest must be the same. A device whose repeats disagree is
# unstable; a device that disagrees with the majority of its model computes wrong numbers.
# With two devices that disagree nobody can say which is wrong, so both fail (the node is
# wrong either way).


@dataclass(frozen=True)
class Outcome:
    """One device's digests and the model it is compared within."""

    component: str
    model: str
    digests: Sequence[str]


def judge_digests(outcomes: Sequence[Outcome]) -> list[CheckResult]:
    """PASS where a device agrees with itself and with its model's majority; FAIL naming how."""
    by_model: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_model.setdefault(outcome.model, []).append(outcome)
    results = []
    for model, group in by_model.items():
        votes = Counter(o.digests[0] for o in group if len(set(o.digests)) == 1)
        top = votes.most_common(2)
        # A majority needs more votes than any rival digest; a tie is no majority.
        majority = top[0][0] if top and (len(top) == 1 or top[0][1] > top[1][1]) else None
        for o in group:
            values: Mapping[str, object] = {"digests": list(o.digests), "model": model}
            if len(set(o.digests)) > 1:
                msg = f"GEMM result changed between repeats ({len(set(o.digests))} different)"
                results.append(CheckResult(SDC, Status.FAIL, msg, o.component, dict(values)))
            elif majority is None and len(group) > 1:
                msg = f"GEMM results of {len(group)} {model} devices disagree; no majority"
                results.append(CheckResult(SDC, Status.FAIL, msg, o.component, dict(values)))
            elif majority is not None and o.digests[0] != majority:
                agree = votes[majority]
                msg = f"GEMM result differs from the other {agree} {model} device(s)"
                results.append(CheckResult(SDC, Status.FAIL, msg, o.component, dict(values)))
            else:
                peers = len(group) - 1
                msg = f"{len(o.digests)} repeats bit-identical" + (
                    f", same as {peers} other device(s)" if peers else ""
                )
                results.append(CheckResult(SDC, Status.PASS, msg, o.component, dict(values)))
    return results


# --- deep.fabric: the slow node -----------------------------------------------------------
# A node that pass 2 confirms slow (slow again with a node cleared in pass 1) FAILs; every
# other node PASSes and names it; a slow pair whose members are both fast with others is
# the path between them (WARN on both, nobody drained).


def _gbps(value: float) -> str:
    return f"{value:.3g} GB/s"


def judge_fabric(
    me: str,
    nodes: list[str],
    figures: Any,  # dist.FabricFigures
    *,
    slow_fraction: float,
    min_busbw_gbps: float = 0.0,
) -> CheckResult:
    """This node's verdict from the figures every node shares."""
    rank = nodes.index(me)
    plan = figures.plan
    values: dict[str, Any] = {
        "nodes": len(nodes),
        "pairs": {
            f"{nodes[a]}-{nodes[b]}": significant(bw) for (a, b), bw in figures.pass1.items()
        },
    }
    if figures.pass2:
        values["second_pass"] = {
            f"{nodes[a]}-{nodes[b]}": significant(bw) for (a, b), bw in figures.pass2.items()
        }
    coll = figures.collectives
    summary = ""
    if coll is not None:
        values.update(
            allreduce_busbw_gbps=significant(coll.allreduce_busbw),
            alltoall_busbw_gbps=significant(coll.alltoall_busbw),
            latency_us=round(coll.latency_us, 1),
            collective_bytes=coll.nbytes,
        )
        summary = (
            f"all-reduce busbw {_gbps(coll.allreduce_busbw)}, all-to-all "
            f"{_gbps(coll.alltoall_busbw)}, latency {coll.latency_us:.0f} us"
        )
    if plan is None:
        return CheckResult(FABRIC, Status.PASS, summary or "nothing measured", me, values)
    values["reference_gbps"] = significant(plan.reference)
    limit = slow_fraction * plan.reference
    confirmed = sorted(
        s for s in plan.suspects
        if any(s in pair and bw < limit for pair, bw in figures.pass2.items())
    )  # fmt: skip
    # A slow pair of two cleared nodes counts when the second pass measured it slow again.
    slow_links = [
        p for p in plan.slow
        if all(n in plan.cleared for n in p) and figures.pass2.get(p, limit) < limit
    ]  # fmt: skip
    values["slow_nodes"] = [nodes[n] for n in confirmed]
    values["slow_links"] = [f"{nodes[a]}-{nodes[b]}" for a, b in slow_links]
    if rank in confirmed:
        mine = [bw for pair, bw in {**figures.pass1, **figures.pass2}.items() if rank in pair]
        msg = (
            f"slow fabric: {_gbps(max(mine))} at best with any peer, healthy pairs reach "
            f"{_gbps(plan.reference)} (below {slow_fraction:.0%} with a cleared peer too)"
        )
        return CheckResult(FABRIC, Status.FAIL, msg, me, values)
    mine_slow = [p for p in slow_links if rank in p]
    if mine_slow:
        peer = nodes[next(n for n in mine_slow[0] if n != rank)]
        msg = (
            f"slow path to {peer} ({_gbps(figures.pass1[mine_slow[0]])} vs "
            f"{_gbps(plan.reference)}), both nodes fast with others: switch port or route"
        )
        return CheckResult(FABRIC, Status.WARN, msg, me, values)
    if coll is not None and min_busbw_gbps and coll.allreduce_busbw < min_busbw_gbps:
        msg = f"all-reduce busbw {_gbps(coll.allreduce_busbw)} below {_gbps(min_busbw_gbps)}"
        return CheckResult(FABRIC, Status.WARN, msg, me, values)
    named = f"; slow node(s): {', '.join(values['slow_nodes'])}" if confirmed else ""
    msg = f"{len(nodes)} nodes, pairs at {_gbps(plan.reference)}" + (
        f", {summary}" if summary else ""
    )
    return CheckResult(FABRIC, Status.PASS, msg + named, me, values)
