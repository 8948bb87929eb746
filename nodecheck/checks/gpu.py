"""GPU checks through NVML (the adapter in `nodecheck.nvml`) and the kernel log (XIDs).

Every NVML-backed check is in group "gpu": they run one after another in one isolated
child, which takes one NVML snapshot (cached per process) and judges it. A hung NVML call
is killed with the child and reported by the runner with the call it hung in.

Conventions: a GPU that NVML cannot reach (NVML_ERROR_GPU_IS_LOST...) FAILs every check
that looks at it; a field NVML does not support on this part is a SKIP for that GPU; an
NVML error that means nodecheck itself is at fault (no permission, bad argument) is an
ERROR. When NVML cannot start at all, gpu.count alone decides whether that is a failure
(the node class expects GPUs) or fine (it expects none); the others SKIP.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodecheck import nvml
from nodecheck.checks import lazy_module
from nodecheck.context import CheckContext
from nodecheck.progress import note
from nodecheck.registry import Option, check
from nodecheck.results import CheckResult, Status

if TYPE_CHECKING:
    from nodecheck.nvml.model import Gpu, NvmlError, Snapshot

# The NVML data model, bound lazily: built in the probe child that runs these checks, not
# in the prolog's parent process (as checks/fabric.py does with its sysfs readers).
M = lazy_module("nodecheck.nvml.model")

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
SEVERITY = Option(str, "fail", "'fail' or 'warn' when the setting differs from expected")


# --- shared plumbing ------------------------------------------------------------------


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
    results: list[CheckResult] = []
    for gpu in snap.gpus:
        if "handle" in gpu.errors:
            results.append(_error_result(cid, gpu.errors["handle"], "GPU", gpu))
            continue
        missing = next(((k, w) for k, w in (needs or {}).items() if k in gpu.errors), None)
        if missing is not None:
            results.append(_error_result(cid, gpu.errors[missing[0]], missing[1], gpu))
            continue
        results.extend(judge(gpu))
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


# --- gpu.count ------------------------------------------------------------------------


@check(
    "gpu.count",
    severity="critical",
    remedy="reboot",
    summary="GPUs visible to NVML == expected for the node class; a lost GPU fails",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "expected": Option(int, None, "GPUs this node class has (0: none; unset: not pinned)"),
        "pci_bus_ids": Option(
            list, [], "expected PCI bus ids (00000000:18:00.0), to name a missing GPU", item=str
        ),
    },
)
def gpu_count(ctx: CheckContext) -> Iterator[CheckResult]:
    """A GPU missing from NVML fell off the bus or was never trained; a lost GPU
    (NVML_ERROR_GPU_IS_LOST) stopped answering. Jobs asking for all GPUs fail or hang.
    Fix: check `dmesg` for Xid 79 / PCIe errors, reseat or reboot, RMA if it recurs.
    Also the place that says whether NVML failing to start matters: a node class
    expecting GPUs FAILs with "NVML unavailable", one expecting none SKIPs."""
    cid = "gpu.count"
    expected = ctx.options["expected"]
    snap = _snapshot(ctx, all_gpus=True)
    err = snap.init_error
    if err is not None:
        if expected == 0:
            yield _result(cid, Status.SKIP, f"no GPUs expected; NVML unavailable: {err}")
        elif expected is None and err.absent:
            msg = f"NVML unavailable: {err}; no GPUs expected (gpu.count expected not set)"
            yield _result(cid, Status.SKIP, msg)
        else:
            want = f" (expected {expected} GPUs)" if expected else ""
            yield _result(cid, Status.FAIL, f"NVML unavailable: {err}{want}", nvml_code=err.code)
        return
    if snap.device_count is None:
        yield _error_result(cid, snap.errors.get("device_count", M.NvmlError(999)), "GPU count")
        return
    found = snap.device_count
    values = {"visible": found, "expected": expected}
    lost = [g for g in snap.gpus if "handle" in g.errors]
    for gpu in lost:
        gerr = gpu.errors["handle"]
        if gerr.gpu_lost:
            msg = f"GPU lost ({gerr.name}): reboot the node"
        else:
            msg = f"GPU unreachable: {gerr}"
        yield _result(cid, Status.FAIL, msg, gpu, nvml_code=gerr.code)
    if expected is not None and found < expected:
        seen = {g.pci_bus_id.upper() for g in snap.gpus if g.pci_bus_id}
        gone = [b for b in ctx.options["pci_bus_ids"] if b.upper() not in seen]
        where = f"; missing {', '.join(gone)}" if gone else ""
        msg = f"{found} GPUs visible (expected {expected}){where}"
        yield _result(cid, Status.FAIL, msg, missing=gone, **values)
    elif expected is not None and found > expected:
        msg = f"{found} GPUs visible (expected {expected}; update gpu.count expected)"
        yield _result(cid, Status.WARN, msg, **values)
    elif not lost:
        if found == 0 and expected is None:
            msg = "NVML sees no GPUs; none expected (gpu.count expected not set)"
            yield _result(cid, Status.SKIP, msg, **values)
        elif found == 0:
            yield _result(cid, Status.PASS, "no GPUs (as expected)", **values)
        else:
            yield _result(cid, Status.PASS, f"{found} GPUs visible", **values)


# --- gpu.model / gpu.driver -----------------------------------------------------------


@check(
    "gpu.model",
    severity="high",
    remedy="admin",
    summary="every GPU is the pinned model (name as NVML reports it, globs allowed)",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "name": Option(str, "", "expected model, e.g. 'NVIDIA H100 80GB HBM3' ('': not pinned)"),
        "only_job_gpus": ONLY_JOB_GPUS,
    },
)
def gpu_model(ctx: CheckContext) -> Iterator[CheckResult]:
    """A different model than the node class says means a swapped board or a GPU that came
    up in a degraded identity; jobs tuned for the pinned part misbehave. Fix: verify the
    hardware against the inventory; update the node class if the change is intended."""
    cid = "gpu.model"
    pinned = ctx.options["name"]
    names = {g.name for g in _snapshot(ctx).gpus if g.name}

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        name = gpu.name or "?"
        if pinned and not fnmatch.fnmatchcase(name, pinned):
            yield _result(cid, Status.FAIL, f"model {name} (expected {pinned})", gpu, name=name)
        elif not pinned and len(names) > 1:
            yield _result(cid, Status.WARN, f"mixed models on node: {name}", gpu, name=name)
        else:
            yield _result(cid, Status.PASS, name, gpu, name=name)

    yield from _per_gpu(ctx, cid, judge, {"name": "model name"})


def _cuda_int(value: int | str) -> int | None:
    """12040, '12040' or '12.4' -> 12040 (NVML's major*1000 + minor*10)."""
    if isinstance(value, int):
        return value
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    major, _, minor = text.partition(".")
    return int(major) * 1000 + int(minor or 0) * 10


def _cuda_text(value: int) -> str:
    return f"{value // 1000}.{value % 1000 // 10}"


@check(
    "gpu.driver",
    severity="high",
    remedy="admin",
    summary="NVIDIA driver and CUDA driver versions are the pinned ones",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "driver_version": Option(str, "", "expected driver, e.g. '550.90.07' (globs; '': any)"),
        "cuda_driver_version": Option(
            (int, str), "", "expected CUDA driver version: 12040 or '12.4' ('': any)"
        ),
    },
)
def gpu_driver(ctx: CheckContext) -> Iterator[CheckResult]:
    """A node left on an old driver (missed in a rollout, or upgraded without reboot) runs
    jobs against a different CUDA than the rest of the cluster. Fix: install the pinned
    driver and reboot (nvidia-smi should show it)."""
    cid = "gpu.driver"
    snap = _snapshot(ctx, all_gpus=True)
    if not snap.available:
        msg = f"NVML unavailable: {snap.init_error.name} (see gpu.count)"
        yield _result(cid, Status.SKIP, msg)
        return
    for key, what in (("driver_version", "driver version"), ("cuda_driver_version", "CUDA")):
        if key in snap.errors:
            yield _error_result(cid, snap.errors[key], what)
            return
    driver, cuda = snap.driver_version or "?", snap.cuda_driver_version or 0
    values = {"driver_version": driver, "cuda_driver_version": cuda}
    want_driver = ctx.options["driver_version"]
    want_cuda = _cuda_int(ctx.options["cuda_driver_version"])
    if want_driver and not fnmatch.fnmatchcase(driver, want_driver):
        yield _result(cid, Status.FAIL, f"driver {driver} (expected {want_driver})", **values)
    elif want_cuda is not None and cuda != want_cuda:
        msg = f"CUDA driver {_cuda_text(cuda)} (expected {_cuda_text(want_cuda)})"
        yield _result(cid, Status.FAIL, msg, **values)
    else:
        msg = f"driver {driver}, CUDA {_cuda_text(cuda)}"
        yield _result(cid, Status.PASS, msg, **values)


# --- gpu.ecc / gpu.remap --------------------------------------------------------------


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
    cid = "gpu.remap"
    max_pages = ctx.options["max_retired_pages"]

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
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


# --- gpu.pcie -------------------------------------------------------------------------


@check(
    "gpu.pcie",
    severity="medium",
    remedy="admin",
    summary="PCIe link width (and optionally generation) not below max or expected",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "expected_width": Option(int, None, "expected lanes, e.g. 16 (unset: the GPU's max)"),
        "expected_gen": Option(int, None, "expected generation, e.g. 5 (implies check_gen)"),
        "check_gen": Option(
            bool, False, "also compare the generation (GPUs drop to gen1 at idle to save power)"
        ),
        "only_job_gpus": ONLY_JOB_GPUS,
    },
)
def gpu_pcie(ctx: CheckContext) -> Iterator[CheckResult]:
    """A link that trained narrower (x8 instead of x16) halves host<->GPU bandwidth: data
    loading and NCCL over PCIe crawl. The current generation drops at idle on purpose, so
    it is only compared when configured. Fix: reseat the GPU/riser, check the slot and
    cables; a link that degrades again is hardware."""
    cid = "gpu.pcie"
    opts = ctx.options
    needs = {
        "pcie_width_current": "PCIe link width",
        "pcie_width_max": "PCIe max link width",
        "pcie_gen_current": "PCIe link generation",
        "pcie_gen_max": "PCIe max link generation",
    }

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        width, gen = gpu.pcie_width_current, gpu.pcie_gen_current
        values = {
            "width": width,
            "max_width": gpu.pcie_width_max,
            "gen": gen,
            "max_gen": gpu.pcie_gen_max,
        }
        want_width = opts["expected_width"] or gpu.pcie_width_max
        want_gen = opts["expected_gen"] or (gpu.pcie_gen_max if opts["check_gen"] else None)
        if want_width and width is not None and width < want_width:
            yield _result(
                cid, Status.FAIL, f"PCIe x{width} (expected x{want_width})", gpu, **values
            )
        elif want_gen and gen is not None and gen < want_gen:
            yield _result(
                cid, Status.FAIL, f"PCIe gen{gen} (expected gen{want_gen})", gpu, **values
            )
        else:
            yield _result(cid, Status.PASS, f"PCIe gen{gen} x{width}", gpu, **values)

    yield from _per_gpu(ctx, cid, judge, needs)


# --- gpu.nvlink -----------------------------------------------------------------------

NVLINK_STATE_KEY = "gpu.nvlink.counters"
DEFAULT_NVLINK_RISE = {
    "replay": 100,
    "recovery": 0,
    "crc_flit": 100,
    "crc_data": 0,
    "ecc_data": 100,
}


@check(
    "gpu.nvlink",
    severity="high",
    remedy="reset-gpu",
    summary="expected NVLinks active; NVLink error counters not rising since the last run",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "expected_active": Option(
            int, None, "active links each GPU must have, e.g. 18 on H100 SXM (unset: all)"
        ),
        "max_increase": Option(
            dict,
            DEFAULT_NVLINK_RISE,
            "per counter (replay, recovery, crc_flit, crc_data, ecc_data): rise allowed "
            "between two runs on one link",
            item=int,
        ),
        "only_job_gpus": ONLY_JOB_GPUS,
    },
)
def gpu_nvlink(ctx: CheckContext) -> Iterator[CheckResult]:
    """A down NVLink makes GPU<->GPU traffic take the slow path or NCCL fail outright;
    rising recovery/CRC errors are a link on its way out. Fix: reset the GPUs or reboot;
    on NVSwitch systems check nvidia-fabricmanager; a link that keeps failing is hardware
    (baseboard, GPU). Counter readings are kept in the state dir between runs."""
    cid = "gpu.nvlink"
    opts = ctx.options
    limits = {**DEFAULT_NVLINK_RISE, **opts["max_increase"]}
    unknown = set(limits) - set(DEFAULT_NVLINK_RISE)
    if unknown:
        raise ValueError(f"max_increase: unknown counters {sorted(unknown)}")
    snap = _snapshot(ctx)
    readings: dict[str, dict[str, dict[str, int]]] = {}
    previous, state_error = _nvlink_previous(ctx)

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        err = gpu.errors.get("nvlink")
        if err is not None and not gpu.nvlinks:
            if err.not_supported and opts["expected_active"]:
                msg = f"no NVLink (expected {opts['expected_active']} active links)"
                yield _result(cid, Status.FAIL, msg, gpu)
            elif err.not_supported:
                yield _result(cid, Status.SKIP, "no NVLink on this GPU", gpu)
            else:
                yield _error_result(cid, err, "NVLink state", gpu)
            return
        broken = [link for link in gpu.nvlinks if "state" in link.errors]
        if broken:
            yield _error_result(cid, broken[0].errors["state"], f"NVLink {broken[0].link}", gpu)
            return
        active = [link.link for link in gpu.nvlinks if link.active]
        down = [link.link for link in gpu.nvlinks if not link.active]
        values: dict[str, Any] = {"active": len(active), "links": len(gpu.nvlinks), "down": down}
        if gpu.uuid:
            readings[gpu.uuid] = {
                str(link.link): dict(link.counters) for link in gpu.nvlinks if link.active
            }
        expected = opts["expected_active"]
        if expected is not None and len(active) < expected:
            where = f"; down: {_list(down)}" if down else ""
            msg = f"{len(active)} NVLinks active (expected {expected}){where}"
            yield _result(cid, Status.FAIL, msg, gpu, **values)
            return
        if expected is None and down:
            msg = f"NVLink {_list(down)} down ({len(active)}/{len(gpu.nvlinks)} active)"
            yield _result(cid, Status.FAIL, msg, gpu, **values)
            return
        rises = _nvlink_rises(previous.get(gpu.uuid or "", {}), readings.get(gpu.uuid or "", {}))
        over = [(link, c, d) for link, c, d in rises if d > limits[c]]
        values["rises"] = [f"link{link} {c} +{d}" for link, c, d in rises]
        if over:
            link, counter, delta = max(over, key=lambda item: item[2] - limits[item[1]])
            more = f" (+{len(over) - 1} more)" if len(over) > 1 else ""
            msg = f"NVLink {link} {counter} errors +{delta} since last run{more}"
            yield _result(cid, Status.FAIL, msg, gpu, sev="medium", act="admin", **values)
        else:
            yield _result(cid, Status.PASS, f"{len(active)} NVLinks active", gpu, **values)

    if snap.available and snap.gpus:
        results = list(_per_gpu(ctx, cid, judge))
        if state_error is None:
            state_error = _nvlink_save(ctx, previous, readings)
        yield from results
        if state_error is not None:
            msg = f"NVLink counters not compared: state unavailable: {state_error}"
            yield _result(cid, Status.ERROR, msg)
    else:
        yield from _per_gpu(ctx, cid, judge)


def _list(items: list[int]) -> str:
    return ",".join(str(i) for i in items)


def _nvlink_previous(ctx: CheckContext) -> tuple[dict[str, Any], str | None]:
    from nodecheck.state import open_state

    try:
        with open_state(ctx.settings.state_dir) as state:
            return dict(state.get_json(NVLINK_STATE_KEY, {}) or {}), None
    except Exception as exc:  # state trouble must not hide a down link
        return {}, f"{type(exc).__name__}: {exc}"


def _nvlink_save(ctx: CheckContext, previous: dict[str, Any], readings: dict) -> str | None:
    from nodecheck.state import open_state

    try:
        with open_state(ctx.settings.state_dir) as state:
            state.put_json(NVLINK_STATE_KEY, {**previous, **readings})
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _nvlink_rises(
    before: Mapping[str, Mapping[str, int]], now: Mapping[str, Mapping[str, int]]
) -> list[tuple[int, str, int]]:
    """(link, counter, increase) for every counter that went up. A counter that went down
    was reset (driver reload, reboot): its new value is the baseline, not a rise."""
    rises = []
    for link, counters in now.items():
        old = before.get(link, {})
        for counter, value in counters.items():
            if counter in old and value > old[counter]:
                rises.append((int(link), counter, value - old[counter]))
    return sorted(rises)


# --- gpu.clocks / gpu.thermal / gpu.power ---------------------------------------------

_REASON_TEXT = {
    "hw_slowdown": "HW slowdown",
    "hw_thermal_slowdown": "HW thermal slowdown",
    "hw_power_brake_slowdown": "HW power brake",
    "sw_thermal_slowdown": "SW thermal slowdown",
    "sw_power_cap": "SW power cap",
}


def _reasons(names: Iterable[str]) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in M.CLOCK_EVENT_REASONS]
    if unknown:
        raise ValueError(
            f"unknown clock event reasons {unknown} (known: {list(M.CLOCK_EVENT_REASONS)})"
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
        active = [n for n, bit in M.CLOCK_EVENT_REASONS.items() if mask & bit]
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


# --- settings: persistence, MIG, compute mode -----------------------------------------


@check(
    "gpu.persistence",
    severity="medium",
    remedy="restart-service",
    summary="persistence mode as the node class expects (on by default)",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "expected": Option(bool, True, "persistence mode on"),
        "severity": SEVERITY,
        "only_job_gpus": ONLY_JOB_GPUS,
    },
)
def gpu_persistence(ctx: CheckContext) -> Iterator[CheckResult]:
    """Without persistence mode the driver tears GPU state down between jobs: every job
    start pays seconds of initialisation and NVML queries get slow. Fix: run
    nvidia-persistenced (or nvidia-smi -pm 1)."""
    cid = "gpu.persistence"
    want, status = ctx.options["expected"], _severity(ctx)

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        have = bool(gpu.persistence_mode)
        text = "on" if have else "off"
        if have != want:
            hint = "; start nvidia-persistenced" if want else ""
            msg = f"persistence mode {text} (expected {'on' if want else 'off'}){hint}"
            yield _result(cid, status, msg, gpu, persistence_mode=have)
        else:
            yield _result(cid, Status.PASS, f"persistence mode {text}", gpu, persistence_mode=have)

    yield from _per_gpu(ctx, cid, judge, {"persistence_mode": "persistence mode"})


@check(
    "gpu.mig",
    severity="high",
    remedy="reset-gpu",
    summary="MIG mode as the node class expects (off by default) and no change pending",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "expected": Option(bool, False, "MIG mode enabled"),
        "severity": SEVERITY,
        "only_job_gpus": ONLY_JOB_GPUS,
    },
)
def gpu_mig(ctx: CheckContext) -> Iterator[CheckResult]:
    """A GPU in the wrong MIG mode exposes the wrong devices to Slurm's GRES: jobs get a
    slice instead of a GPU, or no GPU. A pending change takes effect only after a GPU
    reset. Fix: nvidia-smi -mig 0|1 and reset the GPU."""
    cid = "gpu.mig"
    want, status = ctx.options["expected"], _severity(ctx)
    word = {True: "enabled", False: "disabled"}

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        err = gpu.errors.get("mig_mode")
        if err is not None:
            if err.not_supported and not want:
                yield _result(cid, Status.SKIP, "MIG not supported (not expected)", gpu)
            elif err.not_supported:
                yield _result(cid, status, "MIG not supported (expected enabled)", gpu)
            else:
                yield _error_result(cid, err, "MIG mode", gpu)
            return
        cur, pending = bool(gpu.mig_mode_current), bool(gpu.mig_mode_pending)
        values = {"mig_mode": cur, "pending": pending}
        if cur != want:
            later = " (change pending: reset the GPU)" if pending == want else ""
            msg = f"MIG {word[cur]} (expected {word[want]}){later}"
            yield _result(cid, status, msg, gpu, **values)
        elif pending != cur:
            msg = f"MIG will be {word[pending]} at next GPU reset (expected {word[want]})"
            yield _result(cid, Status.WARN, msg, gpu, **values)
        else:
            yield _result(cid, Status.PASS, f"MIG {word[cur]}", gpu, **values)

    yield from _per_gpu(ctx, cid, judge)


@check(
    "gpu.compute_mode",
    severity="high",
    remedy="admin",
    summary="compute mode as the node class expects (default, exclusive_process, prohibited)",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "expected": Option(str, "default", "default | exclusive_process | prohibited"),
        "severity": SEVERITY,
        "only_job_gpus": ONLY_JOB_GPUS,
    },
)
def gpu_compute_mode(ctx: CheckContext) -> Iterator[CheckResult]:
    """A GPU left in 'prohibited' accepts no CUDA context; one in 'exclusive_process' where
    jobs expect 'default' breaks multi-process jobs (MPS-less sharing, some launchers).
    Fix: nvidia-smi -c DEFAULT (or the mode the class wants)."""
    cid = "gpu.compute_mode"
    want, status = ctx.options["expected"], _severity(ctx)
    modes = M.COMPUTE_MODES.values()
    if want not in modes:
        raise ValueError(f"expected must be one of {sorted(modes)}, not {want!r}")

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        mode = M.COMPUTE_MODES.get(gpu.compute_mode or 0, str(gpu.compute_mode))
        if mode != want:
            msg = f"compute mode {mode} (expected {want})"
            yield _result(cid, status, msg, gpu, compute_mode=mode)
        else:
            yield _result(cid, Status.PASS, f"compute mode {mode}", gpu, compute_mode=mode)

    yield from _per_gpu(ctx, cid, judge, {"compute_mode": "compute mode"})


# --- gpu.fabric -----------------------------------------------------------------------


@check(
    "gpu.fabric",
    severity="critical",
    remedy="restart-service",
    summary="NVSwitch systems: GPU fabric registration completed with success",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "required": Option(bool, False, "FAIL when fabric info is not supported (NVSwitch class)"),
        "only_job_gpus": ONLY_JOB_GPUS,
    },
)
def gpu_fabric(ctx: CheckContext) -> Iterator[CheckResult]:
    """On NVSwitch systems (HGX/DGX) a GPU must register with the fabric, brokered by
    nvidia-fabricmanager, before CUDA can use it: until then CUDA init fails or NVLink
    traffic has nowhere to go. Fix: start/restart nvidia-fabricmanager (its version must
    match the driver), check its log; then reset the GPUs or reboot."""
    cid = "gpu.fabric"
    required = ctx.options["required"]

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        err = gpu.errors.get("fabric")
        fabric = gpu.fabric
        unsupported = (err is not None and err.not_supported) or (
            fabric is not None and fabric.state == M.FABRIC_STATE_NOT_SUPPORTED
        )
        if unsupported:
            if required:
                yield _result(
                    cid, Status.FAIL, "fabric info not supported (NVSwitch expected)", gpu
                )
            else:
                yield _result(
                    cid, Status.SKIP, "not an NVSwitch system (fabric not supported)", gpu
                )
            return
        if err is not None or fabric is None:
            yield _error_result(cid, err or M.NvmlError(999), "fabric info", gpu)
            return
        state = M.FABRIC_STATES.get(fabric.state, str(fabric.state))
        values = {
            "state": state,
            "status": M.NvmlError(fabric.status).name if fabric.status else "NVML_SUCCESS",
            "health_summary": M.FABRIC_HEALTH.get(fabric.healthSummary or 0),
        }
        if fabric.state != M.FABRIC_STATE_COMPLETED:
            msg = f"fabric registration {state} (is nvidia-fabricmanager running?)"
            yield _result(cid, Status.FAIL, msg, gpu, **values)
        elif fabric.status != 0:
            msg = f"fabric registration failed: {M.NvmlError(fabric.status)}"
            yield _result(cid, Status.FAIL, msg, gpu, **values)
        elif fabric.healthSummary == 2:
            yield _result(cid, Status.FAIL, "fabric unhealthy", gpu, **values)
        elif fabric.healthSummary == 3:
            yield _result(cid, Status.WARN, "fabric at limited capacity", gpu, **values)
        else:
            yield _result(cid, Status.PASS, "fabric registration completed", gpu, **values)

    yield from _per_gpu(ctx, cid, judge)


# --- gpu.idle (epilog) ----------------------------------------------------------------


@check(
    "gpu.idle",
    severity="high",
    remedy="cleanup",
    summary="after the job: no compute processes left on the GPUs, GPU memory released",
    phases=("epilog",),
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "max_memory_used_mib": Option(
            int, 1024, "memory used with no process allowed (driver reserve is ~0.5 GiB)"
        ),
        "settle_s": Option((int, float), 2.0, "how long leftovers may take to exit"),
        "only_job_gpus": ONLY_JOB_GPUS,
    },
)
def gpu_idle(ctx: CheckContext) -> Iterator[CheckResult]:
    """A process that outlives its job keeps its GPU memory and context: the next job
    runs out of memory or shares the GPU unknowingly. Memory still used with no process
    is leaked by the driver (a stuck context). Fix: kill the process (see its pid), find
    how it escaped the job's cgroup; leaked memory needs a GPU reset."""
    cid = "gpu.idle"
    opts = ctx.options
    limit = opts["max_memory_used_mib"] * MIB
    snap = _snapshot(ctx)
    deadline = time.monotonic() + opts["settle_s"]
    busy = lambda s: any(g.processes for g in s.gpus)  # noqa: E731
    while snap.available and busy(snap) and time.monotonic() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        note("re-reading compute processes")
        indices = snap.selected if snap.selected is not None else None
        snap = nvml.collect_fresh(ctx.settings.nvml, indices)
    job = f" after job {ctx.job.job_id}" if ctx.job.job_id else ""

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        procs = gpu.processes or ()
        used = gpu.memory.used if gpu.memory else 0
        values = {"pids": [p.pid for p in procs], "memory_used_mib": used // MIB}
        if procs:
            pids = ", ".join(str(p.pid) for p in procs[:5])
            more = f" (+{len(procs) - 5} more)" if len(procs) > 5 else ""
            msg = f"{len(procs)} compute process{'es' if len(procs) > 1 else ''} left{job}: "
            yield _result(cid, Status.FAIL, f"{msg}pid {pids}{more}", gpu, **values)
        elif used > limit:
            msg = f"{used / GIB:.1f} GiB GPU memory still used with no process{job}"
            yield _result(cid, Status.FAIL, msg, gpu, act="reset-gpu", **values)
        else:
            yield _result(cid, Status.PASS, "no processes, memory released", gpu, **values)

    needs = {"processes": "compute processes", "memory": "memory usage"}
    yield from _per_gpu(ctx, cid, judge, needs, snap=snap)


# --- gpu.xid: the kernel log ----------------------------------------------------------

XID_STATE_KEY = "gpu.xid.cursor"
DEFAULT_CRITICAL_XIDS = [48, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140]
# Fell off the bus, GSP timeout/error: a GPU reset is not enough, the node must reboot.
XID_NEEDS_REBOOT = {79, 119, 120}


def _pci_key(address: str) -> tuple[int, int, int] | None:
    """'0000:9a:00', '00000000:9A:00.0' -> (0, 0x9a, 0)."""
    parts = address.split(".")[0].split(":")
    if len(parts) != 3:
        return None
    try:
        return int(parts[0], 16), int(parts[1], 16), int(parts[2], 16)
    except ValueError:
        return None


def _gpu_minors(ctx: CheckContext) -> dict[tuple[int, int, int], int]:
    """PCI address -> device minor (nvidiaN), from the driver's /proc/driver/nvidia/gpus."""
    out = {}
    root = ctx.proc_path("driver", "nvidia", "gpus")
    try:
        entries = list(root.iterdir())
    except OSError:
        return out
    for entry in entries:
        key = _pci_key(entry.name)
        try:
            info = (entry / "information").read_text(errors="replace")
        except OSError:
            continue
        match = re.search(r"^Device Minor:\s*(\d+)", info, re.MULTILINE)
        if key and match:
            out[key] = int(match[1])
    return out


def _boot_id(ctx: CheckContext) -> str:
    try:
        return ctx.proc_path("sys", "kernel", "random", "boot_id").read_text().strip()
    except OSError:
        return ""


@check(
    "gpu.xid",
    severity="critical",
    remedy="reset-gpu",
    summary="no critical NVIDIA XID in the kernel log since the last run",
    timeout_s=5.0,
    options={
        "kmsg": Option(
            str, "/dev/kmsg", "kernel log: /dev/kmsg, or a file in kmsg or dmesg format"
        ),
        "critical": Option(list, DEFAULT_CRITICAL_XIDS, "XIDs that FAIL", item=int),
        "warn": Option(list, [], "XIDs that WARN", item=int),
    },
)
def gpu_xid(ctx: CheckContext) -> Iterator[CheckResult]:
    """The driver logs an XID for every GPU error it sees. The critical ones mean the GPU
    needs a reset or worse: 48 DBE, 63/64 row remap, 74 NVLink, 79 fell off the bus,
    92 high SBE rate, 94/95 contained/uncontained ECC, 119/120 GSP, 140 unrecovered ECC.
    Each XID is reported once: a cursor kept in the state dir (per boot) remembers how far
    the log was read. Fix: see NVIDIA's XID catalogue for the number; usually reset the
    GPU or reboot, RMA when it recurs. Not in the NVML group: it works when NVML hangs."""
    cid = "gpu.xid"
    from nodecheck.kernlog import XID_MARK, Xid, parse_xids, read_kernel_log
    from nodecheck.state import open_state

    path = Path(ctx.options["kmsg"])
    critical, warn = set(ctx.options["critical"]), set(ctx.options["warn"])
    note(f"read {path}")
    try:
        log = read_kernel_log(path, keep=XID_MARK)
    except OSError as exc:
        yield _result(cid, Status.ERROR, f"cannot read {path}: {exc.strerror or exc}")
        return
    boot = _boot_id(ctx)
    with open_state(ctx.settings.state_dir) as state:
        cursor = state.get_json(XID_STATE_KEY) or {}
        same = cursor.get("boot_id") == boot and cursor.get("source") == str(path)
        same = same and cursor.get("kind") == log.kind
        after = int(cursor.get("pos", -1)) if same else -1
        fresh = [r for r in log.records if r.pos > after]
        end = max(log.positions, default=after)
        state.put_json(
            XID_STATE_KEY,
            {"boot_id": boot, "source": str(path), "kind": log.kind, "pos": max(end, after)},
        )
    xids = parse_xids(fresh)
    read_since = sum(1 for pos in log.positions if pos > after)
    minors = _gpu_minors(ctx)
    by_component: dict[str, list[Xid]] = {}
    for x in xids:
        key = _pci_key(x.pci)
        minor = minors.get(key) if key else None
        component = f"gpu{minor}" if minor is not None else f"pci{x.pci}"
        by_component.setdefault(component, []).append(x)
    gap = ""
    if same and log.kind == "kmsg":
        first = min(log.positions, default=after + 1)
        missed = max(0, first - after - 1) + log.lost
        if missed:
            gap = f"{missed} kernel log records lost before they were read"
    worst_any = False
    for component, found in sorted(by_component.items()):
        values = {"xids": sorted({x.xid for x in found}), "count": len(found)}
        bad = [x for x in found if x.xid in critical]
        meh = [x for x in found if x.xid in warn]
        for group, status in ((bad, Status.FAIL), (meh, Status.WARN)):
            if group:
                first = group[0]
                more = f" (+{len(group) - 1} more)" if len(group) > 1 else ""
                msg = f"Xid {first.xid}: {first.text}{more}"
                act = "reboot" if any(x.xid in XID_NEEDS_REBOOT for x in group) else ""
                yield CheckResult(cid, status, msg[:200], component, values, remedy=act)
                worst_any = True
                break
    if gap:
        yield _result(cid, Status.WARN, f"{gap}: XIDs may have been missed")
    if not worst_any:
        others = sorted({x.xid for x in xids})
        extra = f" ({len(xids)} other: Xid {', '.join(map(str, others))})" if xids else ""
        since = "since last run" if same else "since boot"
        values = {"records": read_since, "other_xids": others}
        yield _result(cid, Status.PASS, f"no critical XID {since}{extra}", **values)
