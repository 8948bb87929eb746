"""What every GPU check shares: the NVML snapshot of this run, result builders that collapse
per-GPU results, and the options several checks take."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from nodecheck.checks import boundary
from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Option
from nodecheck.core.results import CheckResult, Status
from nodecheck.probes import nvml

if TYPE_CHECKING:
    from nodecheck.probes.nvml.model import Gpu, NvmlError, Snapshot


GROUP = "gpu"
TIMEOUT_S = 10.0  # the whole gpu group shares one deadline: NVML init plus every check
MIB = 1024**2
GIB = 1024**3

# NVML errors that say nodecheck asked wrongly (or lacks rights), not that the GPU is bad.
_OUR_FAULT = {1, 2, 4, 5, 7, 25, 26}  # UNINITIALIZED INVALID_ARGUMENT NO_PERMISSION ...

ONLY_JOB_GPUS = Option(
    bool,
    False,
    "look only at the job's GPUs (SLURM_JOB_GPUS, taken as NVML indices); all GPUs when unset",
)
SEVERITY = Option(
    str, "fail", "'fail' or 'warn' when the setting differs from expected", choices=("fail", "warn")
)


def _snapshot(ctx: CheckContext, all_gpus: bool = False) -> Snapshot:
    indices = None
    if not all_gpus and ctx.options.get("only_job_gpus") and ctx.job.gpus is not None:
        indices = ctx.job.gpus
    return nvml.get_snapshot(ctx.settings.nvml, indices)


def _result(
    cid: str,
    status: Status,
    message: str,
    gpu: Gpu | None = None,
    /,
    *,
    sev: str = "",
    act: str = "",
    **values: Any,
) -> CheckResult:
    """One result; `sev`/`act` override the check's declared severity and remedy."""
    component = gpu.component if gpu else "node"
    return CheckResult(cid, status, message, component, values, severity=sev, remedy=act)


def _error_result(cid: str, err: NvmlError, what: str, gpu: Gpu | None = None) -> CheckResult:
    """Turn an NVML error on one field into this check's result for that GPU (or node)."""
    values = {"nvml_error": err.name, "nvml_code": err.code}
    if err.gpu_lost:
        msg = f"GPU lost ({err.name}): reboot the node"
        return _result(cid, Status.FAIL, msg, gpu, sev="critical", act="reboot", **values)
    if err.not_supported:
        part = gpu.name if gpu and gpu.name else "this GPU"
        return _result(cid, Status.SKIP, f"{what} not supported on {part}", gpu, **values)
    if err.code in _OUR_FAULT:
        return _result(cid, Status.ERROR, f"cannot read {what}: {err}", gpu, **values)
    return _result(cid, Status.FAIL, f"cannot read {what}: {err}", gpu, act="admin", **values)


def _span(components: list[str]) -> str:
    """gpu0..gpu7 -> 'gpu0-7'; gpu0..3, gpu5..7 -> 'gpu0-3,5-7'; gpu0, gpu2 -> 'gpu0,2'."""
    nums = [int(c[3:]) for c in components if c.startswith("gpu") and c[3:].isdigit()]
    if len(nums) != len(components) or not nums:
        return ",".join(components)
    runs: list[list[int]] = []
    for n in sorted(nums):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return "gpu" + ",".join(
        f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in runs
    )


Summary = Callable[[list[CheckResult]], str]


def _range(key: str, unit: str, suffix: str = "") -> Summary:
    """A summary of passing GPUs as the range of one value, e.g. '31-34C at idle'."""

    def summary(results: list[CheckResult]) -> str:
        nums = [r.values[key] for r in results if isinstance(r.values.get(key), int | float)]
        if not nums:
            return "ok"
        low, high = f"{min(nums):g}", f"{max(nums):g}"
        span = low if low == high else f"{low}-{high}"
        return f"{span}{unit}{suffix}"

    return summary


def _collapse(
    cid: str, results: list[CheckResult], summary: Summary | None = None
) -> Iterator[CheckResult]:
    """Problems one per GPU (so the drain reason names the GPU); passes folded into one."""
    good = [r for r in results if r.status is Status.PASS]
    yield from (r for r in results if r.status is not Status.PASS)
    if not good:
        return
    messages = {r.message for r in good}
    if summary is not None:
        message = summary(good)
    elif len(messages) == 1:
        message = good[0].message
    else:
        message = "; ".join(sorted(messages)) if len(messages) <= 3 else "ok"
    count = f"{len(good)} GPU{'s' if len(good) > 1 else ''}"
    yield CheckResult(
        cid,
        Status.PASS,
        f"{count}: {message}",
        _span([r.component for r in good]),
        {r.component: r.values for r in good},
    )


def _per_gpu(
    ctx: CheckContext,
    cid: str,
    judge: Callable[[Gpu], Iterable[CheckResult]],
    needs: Mapping[str, str] | None = None,
    snap: Snapshot | None = None,
    summary: Summary | None = None,
) -> Iterator[CheckResult]:
    """Run `judge` on every selected GPU; `needs` maps error keys to what they read."""
    snap = snap or _snapshot(ctx)
    if not snap.available:
        msg = f"NVML unavailable: {snap.init_error.name} (see gpu.count)"
        yield _result(cid, Status.SKIP, msg)
        return
    if not snap.gpus:
        if snap.selected is not None:
            yield _result(cid, Status.SKIP, "none of the job's GPUs is visible to NVML")
        elif "device_count" in snap.errors:
            yield _error_result(cid, snap.errors["device_count"], "GPU count")
        else:
            yield _result(cid, Status.SKIP, "no GPUs visible")
        return

    def judged(gpu: Gpu) -> Iterable[CheckResult]:
        if "handle" in gpu.errors:
            return [_error_result(cid, gpu.errors["handle"], "GPU", gpu)]
        missing = next(((k, w) for k, w in (needs or {}).items() if k in gpu.errors), None)
        if missing is not None:
            return [_error_result(cid, gpu.errors[missing[0]], missing[1], gpu)]
        return judge(gpu)

    results = list(boundary.per_component(cid, snap.gpus, lambda gpu: gpu.component, judged))
    yield from _collapse(cid, results, summary)


def _idle(gpu: Gpu) -> bool:
    return not gpu.processes


def _severity(ctx: CheckContext) -> Status:
    value = ctx.options.get("severity", "fail")
    if value not in ("fail", "warn"):
        raise ValueError(f"severity must be 'fail' or 'warn', not {value!r}")
    return Status.FAIL if value == "fail" else Status.WARN


def _watts(milliwatts: int) -> str:
    return f"{milliwatts / 1000:.0f}W"
