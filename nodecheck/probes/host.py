"""The host's memory, mount table and processes, read through psutil.

Every figure comes from a procfs root: the real /proc on a node, a built tree in tests.
psutil reads its Linux figures under `psutil.PROCFS_PATH`, so each call here points that
at the root it is given for the duration of the call (probes run one check at a time in
their own child). What psutil does not offer is read here from the same root: a
process's cgroup (which job it belongs to) and, in host.disk, inodes (os.statvfs).
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil


@contextlib.contextmanager
def _procfs(root: Path) -> Iterator[None]:
    previous = psutil.PROCFS_PATH
    psutil.PROCFS_PATH = str(root)
    try:
        yield
    finally:
        psutil.PROCFS_PATH = previous


@dataclass(frozen=True)
class Memory:
    total: int  # bytes (MemTotal)
    available: int  # bytes (MemAvailable, or psutil's estimate on kernels without it)


def memory(proc_root: Path) -> Memory:
    with _procfs(proc_root), warnings.catch_warnings():
        # psutil warns when a figure it does not use here (e.g. Cached) is missing.
        warnings.simplefilter("ignore", RuntimeWarning)
        mem = psutil.virtual_memory()
    return Memory(total=mem.total, available=mem.available)


@dataclass(frozen=True)
class DiskSpace:
    free: int  # bytes an unprivileged writer may still use
    inodes_free_percent: float


def disk_space(path: str) -> DiskSpace:
    """Free space of the filesystem holding `path` (psutil), and its free inodes, a figure
    psutil does not give (os.statvfs). Either call may hang on a dead mount: callers run
    it under a deadline."""
    usage = psutil.disk_usage(path)
    st = os.statvfs(path)
    inodes = 100.0 * st.f_favail / st.f_files if st.f_files else 100.0
    return DiskSpace(free=usage.free, inodes_free_percent=inodes)


@dataclass(frozen=True)
class Mount:
    """One entry of the mount table (as the kernel lists it, escapes decoded)."""

    source: str
    target: str
    fstype: str
    options: tuple[str, ...]


def mounts(proc_root: Path) -> dict[str, Mount]:
    """The mount table by target; a later mount over the same target wins, as in the kernel."""
    with _procfs(proc_root):
        table = psutil.disk_partitions(all=True)
    return {
        part.mountpoint: Mount(
            part.device, part.mountpoint, part.fstype, tuple(part.opts.split(","))
        )
        for part in table
    }


# A Slurm job's cgroup, as slurmstepd makes it (the job id and, with several slurmd on one
# host, the node name):
#   cgroup v2: 0::/system.slice/slurmstepd.scope/job_812/step_0/user/task_0
#              0::/system.slice/<node>_slurmstepd.scope/job_812/step_batch/user/task_0
#   cgroup v1: 10:devices:/slurm/uid_1000/job_812/step_0/task_0
#              4:memory:/slurm_<node>/uid_1000/job_812/step_batch
_SLURM_CGROUP = re.compile(
    r"/(?:system\.slice/(?:(?P<v2node>[^/]+)_)?slurmstepd\.scope"
    r"|slurm(?:_(?P<v1node>[^/]+))?/uid_[0-9]+)"
    r"/job_(?P<job>[0-9]+)(?:/|$)"
)


@dataclass(frozen=True)
class JobCgroup:
    job_id: str
    node: str | None  # set only where several slurmd share the host


def slurm_job_of(cgroup_text: str) -> JobCgroup | None:
    """The Slurm job a process belongs to, from its /proc/PID/cgroup; None when it is in
    no job's cgroup. Only slurmstepd (root) puts a process there: unlike its environment,
    a user cannot write this."""
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        found = _SLURM_CGROUP.search(path)
        if found:
            return JobCgroup(found["job"], found["v2node"] or found["v1node"])
    return None


@dataclass(frozen=True)
class Process:
    """What host.procs and host.services look at of one process."""

    pid: int
    ppid: int
    uid: int  # the real uid
    name: str  # the kernel's comm: at most 15 characters
    zombie: bool
    job: JobCgroup | None
    # The effective and saved uids: a setuid program a user started keeps the user's real
    # uid but runs as root, and may be named anything its caller liked (host.services).
    euid: int = -1
    suid: int = -1


# Not "name": for a 15-character comm psutil reads the command line too, and reading another
# process's memory blocks while its memory map is locked. The comm file never does.
_ATTRS = ["pid", "ppid", "uids", "status"]


def _comm(proc_root: Path, pid: int) -> str:
    try:
        return (proc_root / str(pid) / "comm").read_text().rstrip("\n")
    except OSError:
        return ""


def processes(proc_root: Path, with_cgroup: bool = True) -> dict[int, Process]:
    """Every process that could be read; one that vanishes meanwhile is left out."""
    out = {}
    with _procfs(proc_root):
        psutil.process_iter.cache_clear()  # its cached Process objects may be another root's
        for proc in psutil.process_iter(_ATTRS, ad_value=None):
            info = proc.info
            if info["ppid"] is None or info["uids"] is None:
                continue  # gone or unreadable midway
            job = None
            if with_cgroup:
                with contextlib.suppress(OSError):
                    job = slurm_job_of((proc_root / str(info["pid"]) / "cgroup").read_text())
            out[info["pid"]] = Process(
                pid=info["pid"],
                ppid=info["ppid"],
                uid=info["uids"].real,
                name=_comm(proc_root, info["pid"]),
                zombie=info["status"] == psutil.STATUS_ZOMBIE,
                job=job,
                euid=info["uids"].effective,
                suid=info["uids"].saved,
            )
    return out


def slurm_environ(proc_root: Path, pid: int) -> dict[str, str]:
    """The Slurm variables of a process's environment (SLURM_JOB_ID, SLURMD_NODENAME,
    SLURM_CONF); empty when it cannot be read. Its owner can write any of it: use it only
    to narrow down processes already known to be that owner's."""
    with _procfs(proc_root):
        try:
            env = psutil.Process(pid).environ()
        except (psutil.Error, OSError):
            return {}
    return {k: v for k, v in env.items() if k in ("SLURM_JOB_ID", "SLURMD_NODENAME", "SLURM_CONF")}
