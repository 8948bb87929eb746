"""Host checks from /proc and statvfs: memory, disk space, mounts, leftover processes, daemons.

All /proc reads go through `ctx.proc_path`, so tests point them at a built tree.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nodecheck.checks import lazy_module
from nodecheck.context import CheckContext
from nodecheck.progress import note
from nodecheck.registry import Option, check
from nodecheck.results import CheckResult, Status

bounded = lazy_module("nodecheck.bounded")  # threads for calls that may hang; child only

GIB = 1024**3
# mem, disk, mounts and services share one probe child (one fork instead of four): their
# reads either cannot block (/proc/meminfo, /proc/PID/stat) or run under a deadline of
# their own (statvfs and mount probes, nodecheck.bounded). host.procs stays alone: it reads
# other processes' environ, which blocks while such a process's memory map is locked.
GROUP = "host"


def _meminfo(ctx: CheckContext) -> dict[str, int]:
    """/proc/meminfo as bytes."""
    out = {}
    for line in ctx.proc_path("meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[key] = int(fields[0]) * (1024 if fields[1:2] == ["kB"] else 1)
    return out


@check(
    "host.mem",
    group=GROUP,
    summary="usable memory: total not below the node class's size (lost DIMMs), enough available",
    timeout_s=2.0,
    severity="high",
    remedy="cleanup",
    options={
        "min_total_gib": Option((int, float), 0, "FAIL when MemTotal is below this (0: off)"),
        "min_available_gib": Option((int, float), 0, "FAIL when MemAvailable is below this"),
        "warn_available_gib": Option((int, float), 0, "WARN when MemAvailable is below this"),
    },
)
def host_mem(ctx: CheckContext) -> Iterator[CheckResult]:
    """MemTotal shrinks when a DIMM fails or is mapped out; MemAvailable low at job start
    means a previous job left memory pinned (leaked shm, hugepages, page cache that won't go).
    Fix: check `dmesg`/BMC for DIMM errors, or reboot to release leaked memory."""
    info = _meminfo(ctx)
    total, avail = info["MemTotal"] / GIB, info.get("MemAvailable", info["MemFree"]) / GIB
    values = {"total_gib": round(total, 2), "available_gib": round(avail, 2)}
    opts = ctx.options
    if opts["min_total_gib"] and total < opts["min_total_gib"]:
        msg = f"memory {total:.1f} GiB below expected {opts['min_total_gib']} GiB (lost DIMM?)"
        yield CheckResult("host.mem", Status.FAIL, msg, values=values, remedy="replace")
    elif opts["min_available_gib"] and avail < opts["min_available_gib"]:
        msg = f"only {avail:.1f} GiB available (need {opts['min_available_gib']} GiB)"
        yield CheckResult("host.mem", Status.FAIL, msg, values=values)
    elif opts["warn_available_gib"] and avail < opts["warn_available_gib"]:
        msg = f"only {avail:.1f} GiB available (warn below {opts['warn_available_gib']} GiB)"
        yield CheckResult("host.mem", Status.WARN, msg, values=values)
    else:
        yield CheckResult(
            "host.mem", Status.PASS, f"{avail:.1f} of {total:.1f} GiB available", values=values
        )


@check(
    "host.disk",
    group=GROUP,
    summary="free space on scratch paths (/tmp, /dev/shm, local scratch)",
    timeout_s=5.0,
    severity="high",
    remedy="cleanup",
    options={
        "min_free_gib": Option(dict, {"/tmp": 1.0}, "path -> minimum free GiB", item=(int, float)),
        "min_free_inodes_percent": Option((int, float), 1.0, "FAIL below this share of inodes"),
        "stat_timeout_s": Option((int, float), 2.0, "a path slower than this to stat is hung"),
    },
)
def host_disk(ctx: CheckContext) -> Iterator[CheckResult]:
    """A full /tmp or /dev/shm makes jobs die at start in confusing ways (NCCL shm, compiler
    caches). Fix: clean leftovers of earlier jobs (tmpwatch, per-job tmpfs) or grow the disk."""
    wanted: dict[str, float] = ctx.options["min_free_gib"]
    if not wanted:
        yield CheckResult("host.disk", Status.SKIP, "no paths configured")
        return
    outcomes = bounded.call_all_with_deadline(
        {path: (lambda p=path: os.statvfs(p)) for path in wanted}, ctx.options["stat_timeout_s"]
    )
    for path, need in wanted.items():
        got = outcomes[path]
        if not got.finished:
            yield CheckResult("host.disk", Status.FAIL, "statvfs hung", component=path)
            continue
        if got.error is not None:
            msg = f"cannot stat: {getattr(got.error, 'strerror', None) or got.error}"
            yield CheckResult("host.disk", Status.FAIL, msg, component=path)
            continue
        st = got.value
        free = st.f_bavail * st.f_frsize / GIB
        inodes_pct = 100.0 * st.f_favail / st.f_files if st.f_files else 100.0
        values = {"free_gib": round(free, 2), "free_inodes_percent": round(inodes_pct, 2)}
        if free < need:
            msg = f"{free:.2f} GiB free, need {need} GiB"
            yield CheckResult("host.disk", Status.FAIL, msg, component=path, values=values)
        elif inodes_pct < ctx.options["min_free_inodes_percent"]:
            msg = f"only {inodes_pct:.2f}% inodes free"
            yield CheckResult("host.disk", Status.FAIL, msg, component=path, values=values)
        else:
            msg = f"{free:.1f} GiB free"
            yield CheckResult("host.disk", Status.PASS, msg, component=path, values=values)


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mounts (octal escapes decoded)."""

    source: str
    target: str
    fstype: str
    options: tuple[str, ...]


def _unescape(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def read_mounts(path: Path) -> dict[str, Mount]:
    """Mount table by target; a later mount over the same target wins, as in the kernel."""
    mounts = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mount = Mount(
            _unescape(parts[0]), _unescape(parts[1]), parts[2], tuple(parts[3].split(","))
        )
        mounts[mount.target] = mount
    return mounts


@check(
    "host.mounts",
    group=GROUP,
    summary="required filesystems mounted (type, read-write) and responding within a deadline",
    timeout_s=10.0,
    severity="critical",
    remedy="admin",
    options={
        "required": Option(list, [], "mount points that must be mounted", item=str),
        "fstypes": Option(dict, {}, "mount point -> expected filesystem type", item=str),
        "read_write": Option(list, [], "mount points that must be mounted rw", item=str),
        "probe_timeout_s": Option((int, float), 3.0, "a mount slower than this to stat is hung"),
    },
)
def host_mounts(ctx: CheckContext) -> Iterator[CheckResult]:
    """A missing /home or /scratch, or a hung NFS/Lustre client, kills every job that lands.
    Fix: remount (`mount -a`), check the storage network / client, then resume."""
    required: list[str] = ctx.options["required"]
    if not required:
        yield CheckResult("host.mounts", Status.SKIP, "no mounts configured")
        return
    mounts = read_mounts(ctx.proc_path("self", "mounts"))
    present = []
    for target in required:
        mount = mounts.get(target)
        want_type = ctx.options["fstypes"].get(target)
        if mount is None:
            yield CheckResult("host.mounts", Status.FAIL, "not mounted", component=target)
        elif want_type and mount.fstype != want_type:
            msg = f"mounted as {mount.fstype}, expected {want_type}"
            yield CheckResult("host.mounts", Status.FAIL, msg, component=target)
        elif target in ctx.options["read_write"] and "ro" in mount.options:
            yield CheckResult("host.mounts", Status.FAIL, "mounted read-only", component=target)
        else:
            present.append(target)
    note(f"stat {' '.join(present)}")
    outcomes = bounded.call_all_with_deadline(
        {t: (lambda t=t: os.statvfs(t)) for t in present}, ctx.options["probe_timeout_s"]
    )
    for target in present:
        got = outcomes[target]
        if not got.finished:
            msg = f"not responding within {ctx.options['probe_timeout_s']}s (hung mount?)"
            yield CheckResult("host.mounts", Status.FAIL, msg, component=target)
        elif got.error is not None:
            msg = f"stat failed: {getattr(got.error, 'strerror', None) or got.error}"
            yield CheckResult("host.mounts", Status.FAIL, msg, component=target)
        else:
            fstype = mounts[target].fstype
            yield CheckResult("host.mounts", Status.PASS, f"{fstype} mounted", component=target)


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


@check(
    "host.services",
    group=GROUP,
    summary="required daemons running (by process name), e.g. munged, nvidia-fabricmanager",
    timeout_s=3.0,
    severity="critical",
    remedy="restart-service",
    options={"required": Option(list, [], "process names that must be running", item=str)},
)
def host_services(ctx: CheckContext) -> Iterator[CheckResult]:
    """Without munged no Slurm RPC authenticates; without nvidia-fabricmanager an NVSwitch
    system's GPUs cannot talk. Fix: restart the daemon and find why it died (journal, core)."""
    required: list[str] = ctx.options["required"]
    if not required:
        yield CheckResult("host.services", Status.SKIP, "no services configured")
        return
    # /proc/PID/comm is truncated to 15 characters by the kernel.
    procs = list_procs(ctx.proc_path(), with_env=False)
    running = {p.comm for p in procs.values() if p.state != "Z"}
    for name in required:
        if name[:15] in running:
            yield CheckResult("host.services", Status.PASS, "running", component=name)
        else:
            yield CheckResult("host.services", Status.FAIL, "not running", component=name)
