"""gpu.persistence, gpu.mig, gpu.compute_mode: GPU settings as the node class expects them."""

from __future__ import annotations

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
    SEVERITY,
    TIMEOUT_S,
    _error_result,
    _per_gpu,
    _result,
    _severity,
)


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
        "expected": Option(
            str,
            "default",
            "default | exclusive_process | prohibited",
            # COMPUTE_MODES' names, spelled out: the NVML model loads only when a GPU check runs
            choices=("default", "exclusive_thread", "prohibited", "exclusive_process"),
        ),
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
    modes = nvml_model.COMPUTE_MODES.values()
    if want not in modes:
        raise ValueError(f"expected must be one of {sorted(modes)}, not {want!r}")

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        mode = nvml_model.COMPUTE_MODES.get(gpu.compute_mode or 0, str(gpu.compute_mode))
        if mode != want:
            msg = f"compute mode {mode} (expected {want})"
            yield _result(cid, status, msg, gpu, compute_mode=mode)
        else:
            yield _result(cid, Status.PASS, f"compute mode {mode}", gpu, compute_mode=mode)

    yield from _per_gpu(ctx, cid, judge, {"compute_mode": "compute mode"})
