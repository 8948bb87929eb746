"""trend.ib_counters: InfiniBand port error rates per hour from the node's own history, and a
bit-error-rate bound for symbol errors from the port's rate."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from nodecheck.checks.context import CheckContext
from nodecheck.checks.fabric.common import _port_name, _present_ports, sysfs
from nodecheck.checks.registry import Option
from nodecheck.checks.trend import common
from nodecheck.checks.trend.rates import HOUR, Limits, Trend, judge_counter, rise
from nodecheck.core.results import CheckResult, Status
from nodecheck.store.series import Reading

COUNTERS = ["symbol_error", "link_error_recovery", "port_rcv_errors", "link_downed"]
# infiniband-diags' ibqueryerrors reports a PortCounters error at 10 by default (its
# default thresholds file: SymbolErrorCounter=10, LinkErrorRecoveryCounter=10,
# PortRcvErrors=10, LinkDownedCounter=10): a trend WARNs at that many per hour and FAILs
# at ten times it; a link that retrains or goes down more than once an hour is failing.
WARN_PER_HOUR = {
    "symbol_error": 10.0,
    "link_error_recovery": 1.0,
    "port_rcv_errors": 10.0,
    "link_downed": 1.0,
}
FAIL_PER_HOUR = {
    "symbol_error": 100.0,
    "link_error_recovery": 4.0,
    "port_rcv_errors": 100.0,
    "link_downed": 2.0,
}
# IBTA's link requirement is a bit error rate of 1e-12 or better (InfiniBand Architecture
# Specification vol. 2, physical layer); a symbol error is at least one bit in error, so
# symbol errors over bits carried is a lower bound of the BER.
FAIL_BER = 1e-12
_ORDER = {"fail": 3, "warn": 2, "ok": 1, "young": 0}


@common.trend_check(
    "trend.ib_counters",
    summary="IB port symbol errors, link recoveries, receive errors per hour (and a BER bound)",
    options={
        "ports": Option(list, [], "ports to watch as device/port (empty: all present)", item=str),
        "counters": Option(list, COUNTERS, "counters/* files trended", item=str),
        "warn_per_hour": Option(
            dict, WARN_PER_HOUR, "counter -> rate per hour that WARNs", item=(int, float), low=0
        ),
        "fail_per_hour": Option(
            dict, FAIL_PER_HOUR, "counter -> rate per hour that FAILs", item=(int, float), low=0
        ),
        "fail_ber": Option(
            float, FAIL_BER, "symbol errors per bit carried that FAIL (0: off)", low=0
        ),
        "fail_growth": Option(
            (int, float), 4.0, "FAIL at this many times the previous window's rate (0: off)", low=0
        ),
        "window_h": Option((int, float), 24.0, "hours the rate is taken over", low=0.1),
        "recent_h": Option(
            (int, float), 6.0, "recent part of the window that must still be over WARN", low=0.1
        ),
        "min_history_h": Option(
            (int, float), 1.0, "hours of readings needed before a trend is judged", low=0
        ),
    },
    group="fabric",
)
def trend_ib_counters(ctx: CheckContext) -> Iterator[CheckResult]:
    """ib.counters judges one run's rise; a marginal cable or transceiver often stays under
    that in every run and errs all day. The trend takes each counter's rate per hour over
    a day from the node's own readings (resets, reboots and a changed HCA start a new
    baseline), and for symbol errors a BER bound from the port's rate against IBTA's 1e-12.
    Fix: drain after the jobs; check the link (`mlxlink -m -c -e`), the switch side, reseat
    or replace the cable, clear the counters, then validate."""
    cid = "trend.ib_counters"
    opts = ctx.options
    root = ctx.settings.sysfs_root
    if opts["ports"]:
        named = [_port_name(name) for name in opts["ports"]]
        if any(p is None for p in named):
            yield CheckResult(cid, Status.ERROR, "option ports: not of the form mlx5_0/1")
            return
        ports = [p for p in named if p is not None]
    else:
        ports = _present_ports(root)
    now = time.time()
    boot = common.boot_id(ctx)
    new: dict[str, dict[str, list[Reading]]] = {c: {} for c in opts["counters"]}
    gbps: dict[str, float] = {}
    for dev, port in ports:
        path = sysfs.ib_class_dir(root) / dev / "ports" / str(port)
        if not path.is_dir():
            continue  # a missing port is ib.port's verdict
        name = f"{dev}/{port}"
        guid = sysfs.read_attr(sysfs.ib_class_dir(root) / dev / "node_guid")
        tag = guid if isinstance(guid, str) else ""
        got = sysfs.read_port_counters(path, list(opts["counters"]), "counters")
        for counter, value in got.items():
            if isinstance(value, int):
                new[counter][name] = [Reading(now, float(value), boot, tag)]
        info = sysfs.read_ib_port(root, dev, port)
        rate = getattr(info, "rate", None)
        if info is not None and hasattr(rate, "gbps"):
            gbps[name] = float(rate.gbps)  # type: ignore[union-attr]
    if not any(new.values()):
        yield CheckResult(cid, Status.SKIP, "no readable HCA port counters")
        return
    judged: dict[str, list[tuple[str, Trend, float | None]]] = {}
    try:
        for counter, readings in new.items():
            if not readings:
                continue
            got = common.series(ctx, f"ib.{counter}", readings, now)
            limits = _limits(opts, counter)
            for port, series in got.items():
                trend = judge_counter(series, now, limits)
                ber = (
                    _ber(series, now, limits, gbps.get(port)) if counter == "symbol_error" else None
                )
                judged.setdefault(port, []).append((counter, trend, ber))
    except Exception as exc:  # the state file's failure is ours, not the hardware's
        yield common.state_error(cid, exc)
        return
    for port in sorted(judged, key=sysfs.natural_key):
        yield _port_result(cid, port, judged[port], opts)


def _limits(opts: Mapping[str, Any], counter: str) -> Limits:
    warn = float(opts["warn_per_hour"].get(counter, WARN_PER_HOUR.get(counter, 10.0)))
    fail = float(opts["fail_per_hour"].get(counter, FAIL_PER_HOUR.get(counter, 100.0)))
    return Limits(
        warn_per_hour=warn,
        fail_per_hour=fail,
        fail_growth=float(opts["fail_growth"]),
        window_h=float(opts["window_h"]),
        recent_h=min(float(opts["recent_h"]), float(opts["window_h"])),
        min_history_h=float(opts["min_history_h"]),
    )


def _ber(
    series: tuple[Reading, ...], now: float, limits: Limits, gbps: float | None
) -> float | None:
    """Symbol errors per bit carried over the window (a lower bound of the BER)."""
    if not gbps:
        return None
    got = rise(series, now - limits.window_h * HOUR, now)
    if got.hours <= 0:
        return None
    return got.total / (gbps * 1e9 * got.hours * HOUR)


def _port_result(
    cid: str, port: str, found: list[tuple[str, Trend, float | None]], opts: Mapping[str, Any]
) -> CheckResult:
    levels: list[tuple[str, str, Trend, float | None]] = []
    for counter, trend, ber in found:
        level = trend.level
        fail_ber = float(opts["fail_ber"])
        # The BER bound FAILs on its own only while the errors still come (recent rate).
        going = trend.recent is not None and trend.recent > 0
        if ber is not None and fail_ber > 0 and ber >= fail_ber and going:
            level = "fail"
        levels.append((level, counter, trend, ber))
    levels.sort(key=lambda item: -_ORDER[item[0]])
    level, counter, trend, ber = levels[0]
    text = trend.describe(counter)
    if ber is not None and level != "young":
        text += f", BER >= {ber:.1e}"
    others = [c for lv, c, _, _ in levels[1:] if lv in ("fail", "warn")]
    if others:
        text += f" (also {', '.join(others)})"
    values: dict[str, Any] = {
        c: {
            "level": lv,
            "per_hour": None if t.rate is None else round(t.rate, 4),
            "recent_per_hour": None if t.recent is None else round(t.recent, 4),
            "growth": None if t.growth is None else round(min(t.growth, 1e9), 4),
            "resets": t.resets,
            **({"ber": b} if b is not None else {}),
        }
        for lv, c, t, b in levels
    }
    return common.result(cid, level, text, port, values, opts)
