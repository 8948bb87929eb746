"""The arithmetic of a trend, pure: a series of readings in, rates and a verdict out.

A counter's rise is counted only between two readings of the same boot where the value did
not go down: a reboot, a driver reload or a cleared counter starts it again from a value
that says nothing about the interval (a reset is a new baseline, never a rise). The time
between such readings is not counted either, so a rate is errors per hour *seen*.

A verdict needs the trend to be still going: FAIL only when the errors rose in more than
one interval of the window and the rate over its recent part is still over the WARN rate,
so a single burst (one interval), or one that then stops, WARNs (early, worth a look) but
never drains. Growth compares the window with the one before it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from nodecheck.store.series import Reading

HOUR = 3600.0


@dataclass(frozen=True)
class Rise:
    """What a counter did over [since, until]: the rise counted, the hours it covers, and
    how many times it started again (reset, reboot)."""

    total: float
    hours: float
    resets: int
    steps: int = 0  # intervals (run to run) with a rise: one is a burst, not a trend

    @property
    def per_hour(self) -> float | None:
        return self.total / self.hours if self.hours > 0 else None


def rise(readings: Sequence[Reading], since: float, until: float) -> Rise:
    total, seconds, resets, steps = 0.0, 0.0, 0, 0
    # A changed tag is another part (a replaced GPU or HCA): a new baseline too.
    for before, after in itertools.pairwise(readings):
        if before.at < since or after.at > until or after.at <= before.at:
            continue
        if after.boot != before.boot or after.tag != before.tag or after.value < before.value:
            resets += 1
            continue
        total += after.value - before.value
        seconds += after.at - before.at
        steps += after.value > before.value
    return Rise(total, seconds / HOUR, resets, steps)


@dataclass(frozen=True)
class Limits:
    """A trend's limits, from its check's options (per hour unless said otherwise)."""

    warn_per_hour: float
    fail_per_hour: float
    fail_growth: float  # FAIL when the window's rate is this many times the previous one's
    window_h: float
    recent_h: float
    min_history_h: float  # hours of readings needed before judging at all


@dataclass(frozen=True)
class Trend:
    """The judgement of one component's series."""

    level: str  # "fail", "warn", "ok", "young" (not enough history)
    rate: float | None  # per hour over the window
    recent: float | None  # per hour over its recent part
    previous: float | None  # per hour over the window before
    growth: float | None  # rate / previous (inf: from nothing)
    hours: float
    resets: int
    window_h: float = 24.0

    def describe(self, what: str, unit: str = "/h") -> str:
        """'correctable ECC 480/h, x4 in 24 h' and the like."""
        if self.rate is None:
            return f"{what}: collecting history ({self.hours:.1f} h so far)"
        text = f"{what} {_num(self.rate)}{unit}"
        if self.growth is not None and self.growth > 1 and math.isfinite(self.growth):
            text += f", x{_num(self.growth)} in {_num(self.window_h)} h"
        elif self.growth is not None and math.isinf(self.growth):
            text += f", new in {_num(self.window_h)} h"
        if self.recent is not None and self.level == "warn" and self.recent < self.rate:
            text += f" (last hours {_num(self.recent)}{unit})"
        return text


def _num(x: float) -> str:
    if x >= 100 or x == int(x):
        return str(round(x))
    return f"{x:.2g}" if x < 1 else f"{x:.1f}"


def judge_counter(readings: Sequence[Reading], now: float, limits: Limits) -> Trend:
    """The verdict on one counter's series (the latest reading is this run's)."""
    window_s, recent_s = limits.window_h * HOUR, limits.recent_h * HOUR
    current = rise(readings, now - window_s, now)
    recent = rise(readings, now - recent_s, now)
    before = rise(readings, now - 2 * window_s, now - window_s)
    if current.hours <= 0 or current.hours < limits.min_history_h:
        return Trend(
            "young", None, None, None, None, current.hours, current.resets, limits.window_h
        )
    rate, recent_rate, prev = current.per_hour, recent.per_hour, before.per_hour
    assert rate is not None
    growth = None
    if prev is not None and before.hours >= limits.min_history_h:
        growth = rate / prev if prev > 0 else (math.inf if rate > 0 else None)
    level = level_of(rate, recent_rate, growth, limits, current.steps)
    return Trend(
        level, rate, recent_rate, prev, growth, current.hours, current.resets, limits.window_h
    )


MIN_STEPS = 2  # a rise in one interval only is a burst, never a FAIL


def level_of(
    rate: float, recent: float | None, growth: float | None, limits: Limits, steps: int
) -> str:
    """fail: over the fail rate, or growing past fail_growth while over the warn rate, and
    in both cases still going (rises in MIN_STEPS intervals or more, the recent rate over
    the warn rate); warn: over the warn rate in the window or recently; else ok."""
    going = steps >= MIN_STEPS and recent is not None and recent >= limits.warn_per_hour > 0
    if going and rate >= limits.fail_per_hour:
        return "fail"
    grows = growth is not None and limits.fail_growth > 0 and growth >= limits.fail_growth
    if going and grows and rate >= limits.warn_per_hour:
        return "fail"
    if rate >= limits.warn_per_hour or (recent or 0) >= limits.warn_per_hour:
        return "warn"
    return "ok"


def share(readings: Sequence[Reading], since: float) -> tuple[float | None, int]:
    """The share of 0/1 samples since `since` that are 1, and how many there are."""
    samples = [r.value for r in readings if r.at >= since]
    if not samples:
        return None, 0
    return sum(1 for v in samples if v > 0) / len(samples), len(samples)


def median(values: Sequence[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
