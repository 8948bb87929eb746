"""host.procs (epilog): no process of the finished job's user left behind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Option, check
from nodecheck.run.results import CheckResult, Status


@dataclass(frozen=True)
class Proc:
    """The parts of /proc/PID that host.procs and host.services look at."""

    pid: int
    ppid: int
    uid: int
    comm: str
    state: str
    job_id: str | None
    slurm_node: str | None  # SLURMD_NODENAME from its environment, if any
    slurm_conf: str | None  # SLURM_CONF from its environment, if any


def _read_proc(pid_dir: Path, with_env: bool = True) -> Proc | None:
    """One /proc/PID entry, or None if it vanished or cannot be read. `with_env` reads the
    Slurm variables of its environment (one more file per process)."""
    try:
        stat_text = (pid_dir / "stat").read_text()
        status = (pid_dir / "status").read_text()
    except OSError:
        return None
    # comm is in parentheses and may itself contain ") ", so split at the last one.
    head, _, tail = stat_text.rpartition(")")
    comm = head.partition("(")[2]
    fields = tail.split()
    uid = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("Uid:")), -1)
    env: dict[bytes, str] = {}
    try:
        environ = (pid_dir / "environ").read_bytes() if with_env else b""
        for entry in environ.split(b"\0"):
            key, _, value = entry.partition(b"=")
            if key in (b"SLURM_JOB_ID", b"SLURMD_NODENAME", b"SLURM_CONF"):
                env[key] = value.decode(errors="replace")
    except OSError:
        pass
    return Proc(
        int(pid_dir.name),
        int(fields[1]),
        uid,
        comm,
        fields[0],
        env.get(b"SLURM_JOB_ID"),
        env.get(b"SLURMD_NODENAME"),
        env.get(b"SLURM_CONF"),
    )


def list_procs(proc_root: Path, with_env: bool = True) -> dict[int, Proc]:
    procs = {}
    for entry in proc_root.iterdir():
        if entry.name.isdigit():
            proc = _read_proc(entry, with_env)
            if proc is not None:
                procs[proc.pid] = proc
    return procs


def _our_tree(procs: dict[int, Proc], starts: Iterable[int], run_root: int) -> set[int]:
    """Our own ancestors (of this process and of the hook process Slurm started) and
    everything under the nodecheck run: they carry the job's env too."""
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


def find_leftovers(ctx: CheckContext, run_root: int) -> list[Proc]:
    """Processes of this job on this node (several slurmd may share a host, each with its
    own SLURMD_NODENAME; several clusters too, each with its own SLURM_CONF, which slurmd
    gives both the job and this epilog), minus our own process tree."""
    conf = os.environ.get("SLURM_CONF")
    procs = list_procs(ctx.proc_path())
    starts = [os.getpid()] + ([ctx.hook_pid] if ctx.hook_pid else [])
    ours = _our_tree(procs, starts, run_root)
    ignored = set(ctx.options["ignore_commands"])
    by_user = ctx.options["match"] == "user" and ctx.job.uid not in (None, 0)
    return [
        p
        for p in procs.values()
        if p.pid not in ours
        and p.state != "Z"
        and p.comm not in ignored
        and (
            (
                p.job_id == ctx.job.job_id
                and p.slurm_node in (None, ctx.node)
                and (conf is None or p.slurm_conf in (None, conf))
            )
            or (by_user and p.uid == ctx.job.uid)
        )
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
            "'job': processes carrying the job's SLURM_JOB_ID; "
            "'user': also any process of the job's user (exclusive nodes)",
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
    run_root = os.getppid()  # the runner: its other children carry the job env too
    deadline = time.monotonic() + ctx.options["grace_s"]
    left = find_leftovers(ctx, run_root)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = find_leftovers(ctx, run_root)
    if not left:
        yield CheckResult("host.procs", Status.PASS, f"nothing left of job {ctx.job.job_id}")
        return
    names = ", ".join(f"{p.pid} {p.comm}" for p in sorted(left, key=lambda p: p.pid)[:5])
    more = f" (+{len(left) - 5} more)" if len(left) > 5 else ""
    msg = f"{len(left)} processes left after job {ctx.job.job_id}: {names}{more}"
    values = {"pids": [p.pid for p in left], "uids": sorted({p.uid for p in left})}
    yield CheckResult("host.procs", Status.FAIL, msg, values=values)
