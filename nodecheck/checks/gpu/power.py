"""gpu.clocks, gpu.thermal, gpu.power: throttling, temperature and power draw of idle GPUs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Option, check
from nodecheck.core.results import CheckResult, Status
from nodecheck.probes.nvml import model as nvml_model

if TYPE_CHECKING:
    from nodecheck.probes.nvml.model import Gpu
from nodecheck.checks.gpu.common import (
    GROUP,
    ONLY_JOB_GPUS,
    TIMEOUT_S,
    _idle,
    _per_gpu,
    _range,
    _result,
    _watts,
)

_REASON_TEXT = {
    "hw_slowdown": "HW slowdown",
    "hw_thermal_slowdown": "HW thermal slowdown",
    "hw_power_brake_slowdown": "HW power brake",
    "sw_thermal_slowdown": "SW thermal slowdown",
    "sw_power_cap": "SW power cap",
}


def _reasons(names: Iterable[str]) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in nvml_model.CLOCK_EVENT_REASONS]
    if unknown:
        raise ValueError(
            f"unknown clock event reasons {unknown} (known: {list(nvml_model.CLOCK_EVENT_REASONS)})"
        )
    return names


@check(
    "gpu.clocks",
    severity="medium",
    remedy="admin",
    summary="no HW slowdown / HW thermal slowdown / power brake throttling while idle",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "fail_reasons": Option(
            list,
            ["hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"],
            "clock event reasons that FAIL when active at idle",
            item=str,
        ),
        "warn_reasons": Option(
            list, ["sw_thermal_slowdown"], "clock event reasons that WARN at idle", item=str
        ),
        "only_when_idle": Option(bool, True, "judge only GPUs with no compute process"),
        "only_job_gpus": ONLY_JOB_GPUS,
    },
)
def gpu_clocks(ctx: CheckContext) -> Iterator[CheckResult]:
    """HW slowdown, HW thermal slowdown or the power brake asserted on an idle GPU means
    the board is signalling a fault (PSU, overheating, external brake): the next job runs
    at a fraction of its speed and slows every rank it talks to. Fix: check the BMC for
    PSU/thermal events, airflow and power cabling; reset the GPU; RMA if it persists."""
    cid = "gpu.clocks"
    fail = _reasons(ctx.options["fail_reasons"])
    warn = _reasons(ctx.options["warn_reasons"])

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        mask = gpu.clocks_event_reasons or 0
        active = [n for n, bit in nvml_model.CLOCK_EVENT_REASONS.items() if mask & bit]
        values = {"reasons": active, "mask": mask}
        if ctx.options["only_when_idle"] and not _idle(gpu):
            count = len(gpu.processes or ())
            msg = f"GPU busy ({count} process{'es' if count > 1 else ''}): clocks not judged"
            yield _result(cid, Status.SKIP, msg, gpu, **values)
            return
        for names, status in ((fail, Status.FAIL), (warn, Status.WARN)):
            hit = [n for n in names if n in active]
            if hit:
                text = ", ".join(_REASON_TEXT.get(n, n) for n in hit)
                msg = f"{text} active at idle (clocks event reasons 0x{mask:x})"
                yield _result(cid, status, msg, gpu, **values)
                return
        yield _result(cid, Status.PASS, "no slowdown", gpu, **values)

    yield from _per_gpu(ctx, cid, judge, {"clocks_event_reasons": "clock event reasons"})


@check(
    "gpu.thermal",
    severity="medium",
    remedy="admin",
    summary="GPU temperature at idle under the limits",
    phases=("prolog", "health", "manual"),
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "max_temp_c": Option(int, 80, "FAIL above this many degrees C at idle"),
        "warn_temp_c": Option(int, 65, "WARN above this many degrees C at idle"),
        "only_job_gpus": ONLY_JOB_GPUS,
    },
)
def gpu_thermal(ctx: CheckContext) -> Iterator[CheckResult]:
    """An idle GPU running hot has a cooling problem (failed fan, blocked airflow, bad
    thermal interface) and will throttle as soon as a job loads it. Not run in the epilog:
    a GPU just out of a job is legitimately hot. Fix: check fans/airflow in the BMC."""
    cid = "gpu.thermal"
    hot, warm = ctx.options["max_temp_c"], ctx.options["warn_temp_c"]

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        temp = gpu.temperature_c
        if not _idle(gpu):
            yield _result(cid, Status.SKIP, "GPU busy: temperature not judged", gpu, temp_c=temp)
        elif temp is not None and temp > hot:
            yield _result(cid, Status.FAIL, f"{temp}C at idle (limit {hot}C)", gpu, temp_c=temp)
        elif temp is not None and temp > warm:
            yield _result(cid, Status.WARN, f"{temp}C at idle (warn {warm}C)", gpu, temp_c=temp)
        else:
            yield _result(cid, Status.PASS, f"{temp}C", gpu, temp_c=temp)

    needs = {"temperature_c": "temperature"}
    yield from _per_gpu(ctx, cid, judge, needs, summary=_range("temp_c", "C", " at idle"))


@check(
    "gpu.power",
    severity="medium",
    remedy="reset-gpu",
    summary="power draw at idle not excessive; enforced power limit as expected",
    phases=("prolog", "health", "manual"),
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "max_idle_w": Option(
            (int, float), None, "FAIL when an idle GPU draws more watts (unset: use fraction)"
        ),
        "max_idle_fraction": Option(
            (int, float), 0.5, "FAIL when an idle GPU draws more than this share of its limit"
        ),
        "expected_limit_w": Option(
            (int, float), None, "FAIL when the enforced power limit is below this (watts)"
        ),
        "only_job_gpus": ONLY_JOB_GPUS,
    },
)
def gpu_power(ctx: CheckContext) -> Iterator[CheckResult]:
    """An idle GPU drawing a lot of power is not idle (a hung kernel, a stuck context) or
    is faulty; a power limit below the node class's costs every job speed. Fix: reset the
    GPU; restore the limit (nvidia-smi -pl) and find what lowered it."""
    cid = "gpu.power"
    opts = ctx.options
    needs = {"power_usage_mw": "power usage", "power_limit_mw": "power limit"}

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        usage, limit = gpu.power_usage_mw or 0, gpu.power_limit_mw or 0
        values = {"usage_w": round(usage / 1000, 1), "limit_w": round(limit / 1000, 1)}
        want_limit = opts["expected_limit_w"]
        if want_limit is not None and limit < want_limit * 1000 - 1000:
            msg = f"power limit {_watts(limit)} (expected {want_limit:g}W)"
            yield _result(cid, Status.FAIL, msg, gpu, act="admin", **values)
            return
        if not _idle(gpu):
            yield _result(cid, Status.SKIP, "GPU busy: idle power not judged", gpu, **values)
            return
        max_mw = (
            opts["max_idle_w"] * 1000
            if opts["max_idle_w"] is not None
            else opts["max_idle_fraction"] * limit
        )
        if max_mw and usage > max_mw:
            msg = f"drawing {_watts(usage)} at idle (max {_watts(int(max_mw))})"
            yield _result(cid, Status.FAIL, msg, gpu, **values)
        else:
            msg = f"{_watts(usage)} at idle, limit {_watts(limit)}"
            yield _result(cid, Status.PASS, msg, gpu, **values)

    yield from _per_gpu(ctx, cid, judge, needs, summary=_range("usage_w", "W", " at idle"))
