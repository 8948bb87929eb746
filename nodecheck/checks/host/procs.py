"""host.procs (epilog): no process of the finished job left behind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Option, check
from nodecheck.core.results import CheckResult, Status

if TYPE_CHECKING:
    from nodecheck.probes.host import Process


def _our_tree(procs: Mapping[int, Process], starts: Iterable[int], run_root: int) -> set[int]:
    """Our own ancestors (of this process and of the hook process Slurm started) and
    everything under the nodecheck run."""
    ours: set[int] = set()
    for pid in starts:
        while pid in procs and pid not in ours:
            ours.add(pid)
            pid = procs[pid].ppid
    for pid in procs:
        chain, cur = [], pid
        while cur in procs and cur not in chain:
            if cur == run_root:
                ours.add(pid)
                break
            chain.append(cur)
            cur = procs[cur].ppid
    return ours


def slurm_cgroups_in_use(ctx: CheckContext) -> bool:
    """Whether slurmd puts jobs in cgroups here (proctrack/cgroup): its v2 scope or a v1
    `slurm` hierarchy under the cgroup mount. Without (proctrack/linuxproc) no process's
    cgroup says which job it belongs to."""
    cgroup_root = ctx.sys_path("fs", "cgroup")
    return any(
        any(cgroup_root.glob(pattern))
        for pattern in ("system.slice/*slurmstepd.scope", "*/slurm", "*/slurm_*")
    )


def _in_job(proc: Process, ctx: CheckContext) -> bool:
    return (
        proc.job is not None
        and proc.job.job_id == ctx.job.job_id
        and proc.job.node in (None, ctx.node)
    )


def _claims_job(proc: Process, ctx: CheckContext) -> bool:
    """Without cgroups: a process of the job's own user whose environment names this job on
    this node and cluster (several slurmd, or clusters, may share a host). Only that user
    (or root) can write that environment, so nobody can pin it on another user's job."""
    from nodecheck.probes import host

    env = host.slurm_environ(ctx.proc_path(), proc.pid)
    conf = os.environ.get("SLURM_CONF")
    return (
        env.get("SLURM_JOB_ID") == ctx.job.job_id
        and env.get("SLURMD_NODENAME") in (None, ctx.node)
        and (conf is None or env.get("SLURM_CONF") in (None, conf))
    )


def find_leftovers(ctx: CheckContext, run_root: int, by_cgroup: bool) -> list[Process]:
    """What is left of this job on this node, minus our own process tree. With Slurm's
    cgroups: the processes in the job's cgroup, which only slurmstepd can put there.
    Without (proctrack/linuxproc): the job user's processes that carry the job's id. With
    match = "user": any process of the job's (non-root) user as well."""
    from nodecheck.probes import host

    procs = host.processes(ctx.proc_path(), with_cgroup=by_cgroup)
    starts = [os.getpid()] + ([ctx.hook_pid] if ctx.hook_pid else [])
    ours = _our_tree(procs, starts, run_root)
    ignored = set(ctx.options["ignore_commands"])
    any_of_user = ctx.options["match"] == "user" and ctx.job.uid not in (None, 0)

    def left_by_job(p: Process) -> bool:
        if by_cgroup:
            return _in_job(p, ctx)
        return p.uid == ctx.job.uid and _claims_job(p, ctx)

    return [
        p
        for p in procs.values()
        if p.pid not in ours
        and not p.zombie
        and p.name not in ignored
        and ((any_of_user and p.uid == ctx.job.uid) or left_by_job(p))
    ]


@check(
    "host.procs",
    summary="no processes of the finished job (or, with match=user, of its user) left behind",
    phases=("epilog",),
    timeout_s=8.0,
    severity="high",
    remedy="cleanup",
    options={
        "match": Option(
            str,
            "job",
            "'job': processes in the job's cgroup (proctrack/cgroup; without Slurm's "
            "cgroups, the job user's processes carrying its id); 'user': also any process "
            "of the job's user (exclusive nodes)",
            choices=("job", "user"),
        ),
        "grace_s": Option((int, float), 3.0, "how long leftovers may take to exit"),
        "ignore_commands": Option(list, [], "process names never counted", item=str),
    },
)
def host_procs(ctx: CheckContext) -> Iterator[CheckResult]:
    """Processes that outlive their job hold GPU memory, CPU and files, and the next job
    on the node fails or runs slow. Fix: kill them (and find out how they escaped the
    job's cgroup: daemonised children, `setsid`, proctrack/linuxproc), then resume."""
    if ctx.job.job_id is None:
        yield CheckResult("host.procs", Status.SKIP, "no job to check for")
        return
    run_root = os.getppid()  # the runner: its other children are ours too
    by_cgroup = slurm_cgroups_in_use(ctx)
    if not by_cgroup and ctx.job.uid is None:
        msg = "no Slurm job cgroups here and no job user (SLURM_JOB_UID) to look for"
        yield CheckResult("host.procs", Status.SKIP, msg)
        return
    deadline = time.monotonic() + ctx.options["grace_s"]
    left = find_leftovers(ctx, run_root, by_cgroup)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = find_leftovers(ctx, run_root, by_cgroup)
    if not left:
        yield CheckResult("host.procs", Status.PASS, f"nothing left of job {ctx.job.job_id}")
        return
    names = ", ".join(f"{p.pid} {p.name}" for p in sorted(left, key=lambda p: p.pid)[:5])
    more = f" (+{len(left) - 5} more)" if len(left) > 5 else ""
    msg = f"{len(left)} processes left after job {ctx.job.job_id}: {names}{more}"
    values = {
        "pids": [p.pid for p in left],
        "uids": sorted({p.uid for p in left}),
        "matched_by": "cgroup" if by_cgroup else "uid+environ",
    }
    yield CheckResult("host.procs", Status.FAIL, msg, values=values)
