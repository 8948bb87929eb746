"""Deep-tier figures against the node's own baseline (issue 28): a step of `validate-job`.

Each validation job (never a manual run: DESIGN.md, a manual run changes no state) keeps
the figures its deep checks measured, one reading per GPU (or GPU pair) and figure, in the
node's series store (store/series.py, series `deep.<check>:<metric>`, e.g.
`deep.gemm:bf16 GEMM` for gpu3). The next validation compares each figure with the median
of the node's previous validations of that figure (at most MAX_RUNS, within the window,
at least `min_runs` of them):

* WARN when it dropped by more than `warn_drop`;
* FAIL when it dropped by more than `fail_drop` and the validation before it had dropped
  by more than `fail_drop` too (its reading carries the tag LOW): a single slow run is
  noise or a passing disturbance, not a trend.

Why here and not as a trend check in checks/trend/: a check sees only its own probe, while
the baseline needs the figures the deep checks produced in the same run; and a validation
job runs its checks as phase "manual" (ctx.keeps_state is False there), while the job
itself is the run that records state (its history events). So the job hands its deep
results to `compare`, which stores and judges them, and the trend results it returns go
to the escalation ladder with the rest: a FAIL drains through the validation's normal
path, reason `nodecheck: trend deep.gemm gpu3: ...` (core/reason.py).

Only GPU figures (components `gpuN`, pairs `gpuN-gpuM`) are kept: a CPU stand-in's rate
follows whatever else the host runs, which says nothing about the node's hardware. The
decision (`judge_figure`) is a pure function; `compare` is gather -> decide -> record.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nodecheck.core.results import CheckResult, Status
from nodecheck.store import series
from nodecheck.store.series import Reading

DAY = 86400.0
MAX_RUNS = 10  # the baseline is the median of the node's last validations, at most these
LOW = "low"  # tag of a reading that dropped by more than fail_drop against its baseline
SERIES_PREFIX = "deep."
BASELINE_CHECKS = ("deep.gemm", "deep.membw", "deep.hostdev", "deep.p2p")
SEVERITY = "medium"  # the node runs, degraded: as the other trends
REMEDY = "admin"  # a figure that stays low is a throttling, cooling, link or RMA question
_GPU = re.compile(r"^gpu\d+(?:-gpu\d+)?$")


class DropLimits(Protocol):
    """What a figure's result reports of its limits (the own baseline's, the class's)."""

    @property
    def warn_drop(self) -> float: ...

    @property
    def fail_drop(self) -> float: ...


@dataclass(frozen=True)
class Limits:
    """The baseline's settings (config: validate_baseline_*)."""

    warn_drop: float  # share below the baseline that WARNs (0.10: 10 %)
    fail_drop: float  # share below the baseline that FAILs when twice in a row
    min_runs: int  # earlier validations needed before a figure is judged
    window_days: float  # validations older than this are not part of the baseline


@dataclass(frozen=True)
class Figure:
    """One figure a deep check measured on one GPU (or pair) in this validation."""

    check: str  # "deep.gemm"
    metric: str  # "bf16 GEMM", "sustained memory copy", "host->device", ...
    component: str  # "gpu3", "gpu0-gpu1"
    value: float
    unit: str = ""

    @property
    def series(self) -> str:
        return f"{self.check}:{self.metric}"


@dataclass(frozen=True)
class Verdict:
    """One figure against its baseline. level: fail, warn, ok, young (too few runs yet)."""

    level: str
    baseline: float | None
    drop: float | None  # 1 - value / baseline; negative: faster than usual
    runs: int  # earlier validations the baseline was taken over
    low_before: bool  # the validation before this one had dropped by more than fail_drop
    low_enough: bool = False  # this one dropped by more than fail_drop

    @property
    def tag(self) -> str:
        """What this run's reading carries for the next validation's two-in-a-row rule."""
        return LOW if self.low_enough else ""


def figures_of(results: Iterable[CheckResult]) -> list[Figure]:
    """The measured GPU figures in a run's deep results, in both shapes the deep checks
    yield: one figure per result (`deep.p2p`: values["measured"]) or several merged per
    component (`deep.gemm`, `deep.membw`, `deep.hostdev`: values[metric]["measured"]). A
    result that measured nothing (ERROR, SKIP) has no figure."""
    out: list[Figure] = []
    for result in results:
        if result.check_id not in BASELINE_CHECKS or not _GPU.match(result.component):
            continue
        if result.status not in (Status.PASS, Status.WARN, Status.FAIL):
            continue
        parts: list[Mapping[str, Any]] = []
        if "measured" in result.values:
            parts.append(result.values)
        else:
            parts += [v for v in result.values.values() if isinstance(v, Mapping)]
        for part in parts:
            value, metric = part.get("measured"), part.get("metric")
            if isinstance(value, int | float) and value > 0 and isinstance(metric, str):
                unit = str(part.get("unit", ""))
                out.append(Figure(result.check_id, metric, result.component, float(value), unit))
    return out


def judge_figure(past: Sequence[Reading], value: float, limits: Limits) -> Verdict:
    """This validation's figure against the node's earlier validations of it (oldest first,
    already limited to the window). The baseline is their median: one odd run among them
    does not move it."""
    earlier = list(past)[-MAX_RUNS:]
    low_before = bool(earlier) and earlier[-1].tag == LOW
    if len(earlier) < max(limits.min_runs, 1):
        return Verdict("young", None, None, len(earlier), low_before)
    baseline = statistics.median(r.value for r in earlier)
    drop = 1.0 - value / baseline if baseline > 0 else 0.0
    low = limits.fail_drop > 0 and drop > limits.fail_drop
    if low and low_before:
        level = "fail"
    elif (limits.warn_drop > 0 and drop > limits.warn_drop) or low:
        level = "warn"
    else:
        level = "ok"
    return Verdict(level, baseline, drop, len(earlier), low_before, low)


def result_of(fig: Figure, verdict: Verdict, limits: Limits) -> CheckResult:
    """The trend's result: `trend.deep_gemm` for deep.gemm (reason `trend deep.gemm`)."""
    if verdict.baseline is None or verdict.drop is None:
        detail = f": collecting a baseline ({verdict.runs} of {limits.min_runs} validations)"
    else:
        detail = (
            f", {relative(verdict.drop)} its own baseline {num(verdict.baseline)} "
            f"(median of {verdict.runs} validations)"
        )
        if verdict.level == "fail":
            detail += f"; more than {limits.fail_drop:.0%} below twice in a row"
        elif verdict.low_enough:
            detail += f"; more than {limits.fail_drop:.0%} below once (FAIL if again)"
    values = {
        "baseline": None if verdict.baseline is None else round(verdict.baseline, 6),
        "drop": None if verdict.drop is None else round(verdict.drop, 4),
        "runs": verdict.runs,
        "low_before": verdict.low_before,
    }
    return figure_result(fig, verdict.level, detail, values, limits, fig.component)


def relative(drop: float) -> str:
    """How far a figure is from what it is compared with: `12% below`, `3% above`."""
    return f"{drop:.0%} below" if drop > 0 else f"{-drop:.0%} above"


def figure_result(
    fig: Figure,
    level: str,
    detail: str,
    values: Mapping[str, Any],
    limits: DropLimits,
    component: str,
) -> CheckResult:
    """A deep figure's comparison as a trend result (the own baseline's here, the class
    median's in class_median.py): `trend.deep_gemm` for deep.gemm, FAIL/WARN/PASS by
    `level`, the message the figure as measured followed by `detail`."""
    cid = "trend." + fig.check.replace(".", "_", 1)
    status = {"fail": Status.FAIL, "warn": Status.WARN}.get(level, Status.PASS)
    shown = f"{fig.metric} {num(fig.value)} {fig.unit}".rstrip()
    everything = {
        "metric": fig.metric,
        "unit": fig.unit,
        "measured": fig.value,
        **values,
        "level": level,
        "warn_drop": limits.warn_drop,
        "fail_drop": limits.fail_drop,
    }
    message = (shown + detail)[:240]
    return CheckResult(cid, status, message, component, everything, 0.0, SEVERITY, REMEDY)


def num(x: float) -> str:
    """A figure as the messages show it: three significant digits, whole from 100."""
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def compare(
    state_dir: Path, results: Iterable[CheckResult], now: float, limits: Limits
) -> list[CheckResult]:
    """gather (this run's figures, the node's series) -> decide (judge_figure) -> record
    (this run's readings, tagged LOW where they dropped past fail_drop), all in one write
    transaction of the state file (store/transaction.py), as the trend checks do. One
    result per figure; the caller keeps the WARN and FAIL ones."""
    from nodecheck.store.transaction import locked_update

    keep_s = limits.window_days * DAY
    out: list[CheckResult] = []
    figures = figures_of(results)
    if not figures:
        return out
    with locked_update(state_dir, series.BUSY_MS) as store:
        conn = store.conn
        series.ensure_schema(conn)
        for fig in figures:
            past = series.read(conn, fig.series, fig.component, now - keep_s)
            verdict = judge_figure([r for r in past if r.at < now], fig.value, limits)
            out.append(result_of(fig, verdict, limits))
            series.append(conn, fig.series, fig.component, Reading(now, fig.value, "", verdict.tag))
            series.prune(conn, fig.series, fig.component, now, keep_s)
    return out
