"""gpu.idle (epilog): no compute process left on the GPUs and their memory released after a job."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Option, check
from nodecheck.probes import nvml
from nodecheck.run.progress import note
from nodecheck.run.results import CheckResult, Status

if TYPE_CHECKING:
    from nodecheck.probes.nvml.model import Gpu
from nodecheck.checks.gpu.common import (
    GIB,
    GROUP,
    MIB,
    ONLY_JOB_GPUS,
    TIMEOUT_S,
    _per_gpu,
    _result,
    _snapshot,
)


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
