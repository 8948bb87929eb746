"""gpu.count, gpu.model, gpu.driver: GPUs present, of the pinned model and driver."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
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
    _error_result,
    _per_gpu,
    _result,
    _snapshot,
)


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
        yield _error_result(
            cid, snap.errors.get("device_count", nvml_model.NvmlError(999)), "GPU count"
        )
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
