"""gpu.idle (epilog): no process left on the job's GPUs and their memory released after a job."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Option, check
from nodecheck.core.progress import note
from nodecheck.core.results import CheckResult, Status
from nodecheck.probes import nvml

if TYPE_CHECKING:
    from nodecheck.probes.nvml.model import Gpu, ProcessInfo
from nodecheck.checks.gpu.common import (
    GIB,
    GROUP,
    MIB,
    TIMEOUT_S,
    _error_result,
    _per_gpu,
    _result,
    _snapshot,
)

PROCESS_LISTS = {"processes": "compute", "graphics_processes": "graphics"}


def _leftovers(gpu: Gpu) -> tuple[ProcessInfo, ...]:
    """Every process on the GPU, compute and graphics (a process doing both once)."""
    seen: dict[int, ProcessInfo] = {}
    for key in PROCESS_LISTS:
        for proc in getattr(gpu, key) or ():
            seen.setdefault(proc.pid, proc)
    return tuple(seen.values())


@check(
    "gpu.idle",
    severity="high",
    remedy="cleanup",
    summary="after the job: no processes left on its GPUs, GPU memory released",
    phases=("epilog",),
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "max_memory_used_mib": Option(
            int, 1024, "memory used with no process allowed (driver reserve is ~0.5 GiB)"
        ),
        "settle_s": Option((int, float), 2.0, "how long leftovers may take to exit"),
        "only_job_gpus": Option(
            bool,
            True,
            "look only at the job's GPUs (SLURM_JOB_GPUS): on a shared node another job's "
            "processes are not leftovers; all GPUs when the job's are not known",
        ),
    },
)
def gpu_idle(ctx: CheckContext) -> Iterator[CheckResult]:
    """A process that outlives its job keeps its GPU memory and context: the next job
    runs out of memory or shares the GPU unknowingly. Memory still used with no process
    is leaked by the driver (a stuck context). Compute and graphics processes both count;
    a GPU whose process list NVML cannot give is an ERROR, never taken as idle. Only the
    finished job's GPUs are looked at when Slurm says which they were (another job may
    be running on the others). Fix: kill the process (see its pid), find how it escaped
    the job's cgroup; leaked memory needs a GPU reset."""
    cid = "gpu.idle"
    opts = ctx.options
    limit = opts["max_memory_used_mib"] * MIB
    snap = _snapshot(ctx)
    deadline = time.monotonic() + opts["settle_s"]
    busy = lambda s: any(_leftovers(g) for g in s.gpus)  # noqa: E731
    while snap.available and busy(snap) and time.monotonic() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        note("re-reading compute processes")
        indices = snap.selected if snap.selected is not None else None
        snap = nvml.collect_fresh(ctx.settings.nvml, indices)
    job = f" after job {ctx.job.job_id}" if ctx.job.job_id else ""

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        for key, kind in PROCESS_LISTS.items():
            err = gpu.errors.get(key)
            if err is not None and err.gpu_lost:
                yield _error_result(cid, err, f"{kind} processes", gpu)
                return
            if getattr(gpu, key) is None:
                why = err.name if err is not None else "not reported"
                msg = f"{kind} process list unavailable ({why}): cannot tell whether it is idle"
                yield _result(cid, Status.ERROR, msg, gpu)
                return
        procs = _leftovers(gpu)
        used = gpu.memory.used if gpu.memory else 0
        values = {"pids": [p.pid for p in procs], "memory_used_mib": used // MIB}
        if procs:
            pids = ", ".join(str(p.pid) for p in procs[:5])
            more = f" (+{len(procs) - 5} more)" if len(procs) > 5 else ""
            kinds = [kind for key, kind in PROCESS_LISTS.items() if getattr(gpu, key)]
            word = f"{kinds[0]} " if len(kinds) == 1 else ""
            msg = f"{len(procs)} {word}process{'es' if len(procs) > 1 else ''} left{job}: "
            yield _result(cid, Status.FAIL, f"{msg}pid {pids}{more}", gpu, **values)
        elif used > limit:
            msg = f"{used / GIB:.1f} GiB GPU memory still used with no process{job}"
            yield _result(cid, Status.FAIL, msg, gpu, act="reset-gpu", **values)
        else:
            yield _result(cid, Status.PASS, "no processes, memory released", gpu, **values)

    needs = {"memory": "memory usage"}
    yield from _per_gpu(ctx, cid, judge, needs, snap=snap)
