"""What the trend checks share: their options, the series store round trip, and the result
a trend makes.

A trend check reads its signal through the same probe as the check it watches (NVML,
sysfs, the kernel log), appends this run's reading to the node's series (store/series.py)
and judges the series (rates.py). It runs in health and epilog runs, never in the prolog:
a trend is never a reason to refuse a job at its start, and a drain from health leaves
running jobs to finish (Slurm: DRAINING, then DRAINED). Its FAIL carries severity medium
and remedy `validate`: with `resume_via = "validation"` the node goes through the
quarantine loop's deep tier before it takes jobs again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Option, check
from nodecheck.checks.trend.rates import HOUR, Limits, Trend
from nodecheck.core.results import CheckResult, Status
from nodecheck.store.series import Reading, record_and_read

# Trends judge what happened between runs: never in the prolog (a job's start is not the
# time to act on a slope), in health (every HealthCheckInterval) and epilog, and by hand.
PHASES = ("health", "epilog", "manual")
SEVERITY = "medium"  # jobs run, degraded or at risk: drain after them, not before
REMEDY = "validate"  # the quarantine loop's deep tier decides whether it comes back
TIMEOUT_S = 10.0

CheckFunc = Callable[[CheckContext], Iterable[CheckResult]]


def trend_check(
    check_id: str,
    summary: str,
    options: Mapping[str, Option],
    *,
    group: str | None = None,
    timeout_s: float = TIMEOUT_S,
) -> Callable[[CheckFunc], Callable[..., Any]]:
    """`@check` with what every trend shares: its phases, severity and remedy, and off by
    default (a trend needs days of the node's own readings before a site trusts it)."""
    return check(
        check_id,
        summary=summary,
        phases=PHASES,
        timeout_s=timeout_s,
        group=group,
        severity=SEVERITY,
        remedy=REMEDY,
        enabled_by_default=False,
        options=options,
    )


def counter_options(
    warn: float, fail: float, growth: float, window_h: float = 24.0, recent_h: float = 6.0
) -> dict[str, Option]:
    """The options every counter trend takes, with its own defaults."""
    return {
        "warn_per_hour": Option(
            (int, float), warn, "rate (per hour, over the window or recently) that WARNs", low=0
        ),
        "fail_per_hour": Option(
            (int, float), fail, "rate over the window that FAILs while still going", low=0
        ),
        "fail_growth": Option(
            (int, float),
            growth,
            "FAIL when the window's rate is this many times the previous window's (0: off)",
            low=0,
        ),
        "window_h": Option((int, float), window_h, "hours the rate is taken over", low=0.1),
        "recent_h": Option(
            (int, float),
            recent_h,
            "the recent part of the window that must still be over warn_per_hour to FAIL",
            low=0.1,
        ),
        "min_history_h": Option(
            (int, float), 1.0, "hours of readings needed before a trend is judged", low=0
        ),
    }


def limits_of(opts: Mapping[str, Any]) -> Limits:
    return Limits(
        warn_per_hour=float(opts["warn_per_hour"]),
        fail_per_hour=float(opts["fail_per_hour"]),
        fail_growth=float(opts["fail_growth"]),
        window_h=float(opts["window_h"]),
        recent_h=min(float(opts["recent_h"]), float(opts["window_h"])),
        min_history_h=float(opts["min_history_h"]),
    )


def keep_s(opts: Mapping[str, Any]) -> float:
    """How long the series is kept: the window and the one it is compared with."""
    return 2 * float(opts["window_h"]) * HOUR + HOUR


def boot_id(ctx: CheckContext) -> str:
    try:
        return ctx.proc_path("sys", "kernel", "random", "boot_id").read_text().strip()
    except OSError:
        return ""


def series(
    ctx: CheckContext, name: str, new: Mapping[str, Iterable[Reading]], now: float
) -> dict[str, tuple[Reading, ...]]:
    """This run's readings stored (hook runs only) and each component's series read back."""
    return record_and_read(
        ctx.settings.state_dir, name, new, keep_s(ctx.options), now, ctx.keeps_state
    )


def status_of(level: str) -> Status:
    return {"fail": Status.FAIL, "warn": Status.WARN}.get(level, Status.PASS)


def result(
    cid: str, level: str, text: str, component: str, values: Mapping[str, Any], opts: Any
) -> CheckResult:
    """A trend's result at `level`. A site that wants to watch a trend before it drains sets
    the check's `report_only = true`: the run's one report-only rule (run/report_only.py)
    turns its FAIL into a WARN and counts it in nodecheck_check_report_only."""
    return CheckResult(cid, status_of(level), text[:200], component, {**values, "level": level})


def trend_result(
    cid: str, component: str, trend: Trend, what: str, opts: Mapping[str, Any], **values: Any
) -> CheckResult:
    data = {
        "per_hour": _round(trend.rate),
        "recent_per_hour": _round(trend.recent),
        "previous_per_hour": _round(trend.previous),
        "growth": None if trend.growth is None else _round(min(trend.growth, 1e9)),
        "hours": round(trend.hours, 2),
        "resets": trend.resets,
        **values,
    }
    return result(cid, trend.level, trend.describe(what), component, data, opts)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def state_error(cid: str, exc: Exception) -> CheckResult:
    """The series could not be read or written: nodecheck's problem, never the node's."""
    msg = f"trend series unavailable ({type(exc).__name__}: {exc}); nothing judged"
    return CheckResult(cid, Status.ERROR, msg[:240], component="state")


def judge_all(
    cid: str,
    ctx: CheckContext,
    name: str,
    new: Mapping[str, Iterable[Reading]],
    now: float,
    judge: Callable[[str, tuple[Reading, ...]], CheckResult],
) -> Iterator[CheckResult]:
    """Store and read back, then one result per component; a state failure is an ERROR."""
    try:
        got = series(ctx, name, new, now)
    except Exception as exc:  # the state file's failure is ours, not the hardware's
        yield state_error(cid, exc)
        return
    for component in sorted(got, key=_natural):
        yield judge(component, got[component])


def _natural(component: str) -> tuple[str, int]:
    head = component.rstrip("0123456789")
    tail = component[len(head) :]
    return head, int(tail) if tail else -1
