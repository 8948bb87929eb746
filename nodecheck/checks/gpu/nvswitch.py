"""gpu.fabric: on NVSwitch systems, the fabric manager state and each GPU's fabric registration."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Option, check
from nodecheck.run.results import CheckResult, Status

if TYPE_CHECKING:
    from nodecheck.probes.nvml.model import Gpu
from nodecheck.checks.gpu.common import (
    GROUP,
    ONLY_JOB_GPUS,
    TIMEOUT_S,
    _error_result,
    _per_gpu,
    _result,
    nvml_model,
)


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
            fabric is not None and fabric.state == nvml_model.FABRIC_STATE_NOT_SUPPORTED
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
            yield _error_result(cid, err or nvml_model.NvmlError(999), "fabric info", gpu)
            return
        state = nvml_model.FABRIC_STATES.get(fabric.state, str(fabric.state))
        values = {
            "state": state,
            "status": nvml_model.NvmlError(fabric.status).name if fabric.status else "NVML_SUCCESS",
            "health_summary": nvml_model.FABRIC_HEALTH.get(fabric.healthSummary or 0),
        }
        if fabric.state != nvml_model.FABRIC_STATE_COMPLETED:
            msg = f"fabric registration {state} (is nvidia-fabricmanager running?)"
            yield _result(cid, Status.FAIL, msg, gpu, **values)
        elif fabric.status != 0:
            msg = f"fabric registration failed: {nvml_model.NvmlError(fabric.status)}"
            yield _result(cid, Status.FAIL, msg, gpu, **values)
        elif fabric.healthSummary == 2:
            yield _result(cid, Status.FAIL, "fabric unhealthy", gpu, **values)
        elif fabric.healthSummary == 3:
            yield _result(cid, Status.WARN, "fabric at limited capacity", gpu, **values)
        elif fabric.healthSummary is None and (flags := _health_flags(fabric.healthMask)):
            # Only the v2 struct (drivers before R580, or pynvml up to 12.575): no summary,
            # the mask's flags alone. Reported, not drained: a signal new to these parts.
            msg = f"fabric health: {', '.join(flags)}"
            yield _result(cid, Status.WARN, msg, gpu, **values)
        else:
            yield _result(cid, Status.PASS, "fabric registration completed", gpu, **values)

    yield from _per_gpu(ctx, cid, judge)


# NVML_GPU_FABRIC_HEALTH_MASK_* (nvml.h; pynvml 12.570 on): 2-bit fields at these shifts,
# each 0 (not supported), 1 (true) or 2 (false). What a true flag means, for the message.
_HEALTH_FLAGS = (
    (0, "bandwidth degraded"),  # DEGRADED_BW
    (2, "route recovery in progress"),  # ROUTE_RECOVERY
    (4, "route unhealthy"),  # ROUTE_UNHEALTHY
    (6, "access timeout recovery in progress"),  # ACCESS_TIMEOUT_RECOVERY
)


def _health_flags(mask: int | None) -> list[str]:
    return [name for shift, name in _HEALTH_FLAGS if mask and (mask >> shift) & 0x3 == 1]


# --- gpu.idle (epilog) ----------------------------------------------------------------
