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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from nodecheck.results import CheckResult, Status

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
        values["measured"] = round(fig.value, 4)
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
                node_median=round(median, 4), fraction=round(share, 3),
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


def with_duration(results: list[CheckResult], seconds: float) -> list[CheckResult]:
    return [replace(r, duration_s=seconds) for r in results]
