"""gpu.ecc and gpu.remap: uncorrectable memory errors and row remapping (or retired pages)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Option, check
from nodecheck.core.results import CheckResult, Status

if TYPE_CHECKING:
    from nodecheck.probes.nvml.model import Gpu
from nodecheck.checks.gpu.common import (
    GROUP,
    ONLY_JOB_GPUS,
    TIMEOUT_S,
    _error_result,
    _per_gpu,
    _result,
    _snapshot,
)


@check(
    "gpu.ecc",
    severity="critical",
    remedy="reset-gpu",
    summary="ECC enabled; uncorrectable (DBE) counts since reset and lifetime under limits",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "require_enabled": Option(bool, True, "FAIL when ECC is off"),
        "max_volatile_uncorrected": Option(
            int, 0, "uncorrectable errors allowed since the last GPU reset"
        ),
        "max_aggregate_uncorrected": Option(
            int, None, "uncorrectable errors allowed over the GPU's life (unset: not checked)"
        ),
        "only_job_gpus": ONLY_JOB_GPUS,
    },
)
def gpu_ecc(ctx: CheckContext) -> Iterator[CheckResult]:
    """An uncorrectable (double-bit) ECC error since the last reset means memory contents
    were lost: the next job may read corrupt data or crash (Xid 48/94/95). Fix: drain,
    reset the GPU (nvidia-smi -r) or reboot, then watch gpu.remap; a lifetime count that
    keeps growing is an RMA case. ECC off: `nvidia-smi -e 1` and reset."""
    cid = "gpu.ecc"
    opts = ctx.options

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        values = {
            "volatile_uncorrected": gpu.ecc_uncorrected_volatile,
            "aggregate_uncorrected": gpu.ecc_uncorrected_aggregate,
            "volatile_corrected": gpu.ecc_corrected_volatile,
            "aggregate_corrected": gpu.ecc_corrected_aggregate,
            "mode": gpu.ecc_mode_current,
            "pending_mode": gpu.ecc_mode_pending,
        }
        if not gpu.ecc_mode_current:
            if opts["require_enabled"]:
                later = " (on after next GPU reset)" if gpu.ecc_mode_pending else ""
                msg = f"ECC disabled{later}: enable with nvidia-smi -e 1 and reset"
                yield _result(cid, Status.FAIL, msg, gpu, sev="high", act="admin", **values)
            else:
                yield _result(cid, Status.PASS, "ECC off (allowed)", gpu, **values)
            return
        for key in ("ecc_uncorrected_volatile", "ecc_uncorrected_aggregate"):
            if key in gpu.errors and not gpu.errors[key].not_supported:
                yield _error_result(cid, gpu.errors[key], "ECC error counts", gpu)
                return
        volatile, aggregate = gpu.ecc_uncorrected_volatile, gpu.ecc_uncorrected_aggregate
        limit_v, limit_a = opts["max_volatile_uncorrected"], opts["max_aggregate_uncorrected"]
        if volatile is not None and volatile > limit_v:
            msg = f"{volatile} uncorrectable ECC errors since last reset (volatile DBE): reset GPU"
            yield _result(cid, Status.FAIL, msg, gpu, **values)
        elif limit_a is not None and aggregate is not None and aggregate > limit_a:
            msg = f"{aggregate} uncorrectable ECC errors lifetime (limit {limit_a}): RMA candidate"
            yield _result(cid, Status.FAIL, msg, gpu, act="replace", **values)
        elif opts["require_enabled"] and gpu.ecc_mode_pending is False:
            msg = "ECC will be disabled at next GPU reset (pending mode off)"
            yield _result(cid, Status.WARN, msg, gpu, **values)
        else:
            yield _result(cid, Status.PASS, "ECC on, no uncorrectable errors", gpu, **values)

    yield from _per_gpu(ctx, cid, judge, {"ecc_mode": "ECC mode"})


@check(
    "gpu.remap",
    severity="critical",
    remedy="reset-gpu",
    summary="row remapping not pending and not failed; retired pages on pre-Ampere parts",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "max_retired_pages": Option(
            int, 60, "retired pages (parts without row remapping) at which to FAIL (RMA)"
        ),
        "only_job_gpus": ONLY_JOB_GPUS,
    },
)
def gpu_remap(ctx: CheckContext) -> Iterator[CheckResult]:
    """Ampere and later repair bad HBM rows by remapping them, which takes effect only at
    the next GPU reset: until then the bad row is still in use. A remap failure means the
    bank is out of spare rows. Fix: pending -> drain, reset the GPU (or reboot), resume;
    failure -> RMA. Older parts retire pages instead (pending -> reset; many -> RMA)."""
    from nodecheck.probes.recovery_action import driver_branch

    cid = "gpu.remap"
    max_pages = ctx.options["max_retired_pages"]
    # The recovery action's codes mean what the running driver's branch says they mean.
    branch = driver_branch(_snapshot(ctx).driver_version)

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        results = list(judge_memory(gpu))
        if (recovery := _recovery_result(cid, gpu, branch)) is not None:
            results = [r for r in results if r.status is not Status.PASS] + [recovery]
        yield from results

    def judge_memory(gpu: Gpu) -> Iterator[CheckResult]:
        rows = gpu.remapped_rows
        if rows is not None:
            values = {
                "corr_rows": rows.corrRows,
                "unc_rows": rows.uncRows,
                "pending": rows.isPending,
                "failure": rows.failureOccurred,
            }
            if rows.failureOccurred:
                msg = "row remap failure (needs RMA)"
                yield _result(cid, Status.FAIL, msg, gpu, act="replace", **values)
            elif rows.isPending:
                msg = "row remap pending (needs GPU reset)"
                yield _result(cid, Status.FAIL, msg, gpu, **values)
            else:
                msg = "no row remap pending"
                yield _result(cid, Status.PASS, msg, gpu, **values)
            return
        err = gpu.errors.get("remapped_rows")
        if err is not None and not err.not_supported:
            yield _error_result(cid, err, "remapped rows", gpu)
            return
        # No row remapping on this part: dynamic page retirement.
        for key in ("retired_pages_pending", "retired_pages_sbe", "retired_pages_dbe"):
            if key in gpu.errors:
                if gpu.errors[key].not_supported:
                    what = "row remapping and page retirement"
                    yield _error_result(cid, gpu.errors[key], what, gpu)
                else:
                    yield _error_result(cid, gpu.errors[key], "retired pages", gpu)
                return
        pages = (gpu.retired_pages_sbe or 0) + (gpu.retired_pages_dbe or 0)
        values = {
            "retired_pages_pending": gpu.retired_pages_pending,
            "retired_pages_sbe": gpu.retired_pages_sbe,
            "retired_pages_dbe": gpu.retired_pages_dbe,
        }
        if gpu.retired_pages_pending:
            msg = "page retirement pending (needs GPU reset)"
            yield _result(cid, Status.FAIL, msg, gpu, **values)
        elif pages >= max_pages:
            msg = f"{pages} retired pages (limit {max_pages}): RMA candidate"
            yield _result(cid, Status.FAIL, msg, gpu, act="replace", **values)
        else:
            yield _result(cid, Status.PASS, f"{pages} retired pages, none pending", gpu, **values)

    yield from _per_gpu(ctx, cid, judge)


def _recovery_result(cid: str, gpu: Gpu, branch: int | None) -> CheckResult | None:
    """The recovery action the driver asks for this GPU (NVML_FI_DEV_GET_GPU_RECOVERY_ACTION,
    R565 and later; `nvidia-smi -q` shows it as "Reset Required" / "Drain and Reset
    Recommended"), read by the driver's branch (None: unknown, the safe reading). None when
    there is none or the driver cannot say."""
    from nodecheck.checks.gpu import recovery

    code = gpu.recovery_action
    if code is None or code == 0:
        return None
    verdict = recovery.judge(code, branch)
    if verdict.status == "info":
        return None
    msg = f"driver asks for recovery: {verdict.label}"
    level = Status.FAIL if verdict.status == "fail" else Status.WARN
    values = {"recovery_action": code, "driver_branch": branch}
    return _result(cid, level, msg, gpu, act=verdict.remedy, **values)
