"""Which validate run owns which node: one run's nodes are left alone by every other.

Runs overlap: cron's `--idle` and `--pending`, an admin's `validate NODE` beside them.
The mark of ownership is the run's validation job itself: an active `nodecheck-validate`
job on a node, whose comment names the run (`[run HOST:PID:START]`, START being the
process's start time in clock ticks since boot, so a reused pid is told apart). A run
leaves such a node alone ("skipped: being validated by another run"), with three
exceptions, jobs that hold a node for nobody:

- a job Slurm requeued and held after its launch failed (its prolog failed): it never
  runs by itself, and keeps the reservation "in use";
- a job of a run on this host that is gone (killed -9 half-way): its node is still in the
  reservation, out of users' reach, and the next run takes it over;
- (the node then goes to the lowest job id) two runs on two hosts that claimed the same
  node in the same moment: job ids are slurmctld's own order, so both agree who lost.

The reservation's node list is read and written whole (Slurm 22.05 has no `Nodes+=`):
every run makes those changes, and its claims, under one flock (`validate_lock_file`),
held for moments, never for a run's whole wait. Everything but `RunId.this_process`,
`alive_here` and `validate_lock` is pure.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from nodecheck.slurm.job_json import JobRecord

_MARK = re.compile(r"\[run (?P<host>[^\]\s:]+):(?P<pid>\d+):(?P<start>\d+)\]$")
LOCK_WAIT_S = 60.0


class ValidateBusy(RuntimeError):
    """Another validate run held the lock for longer than a run ever needs it."""


@dataclass(frozen=True)
class RunId:
    """One validate run: host, pid and the process's start time (ticks since boot)."""

    host: str
    pid: int
    start: int

    @property
    def mark(self) -> str:
        return f"[run {self.host}:{self.pid}:{self.start}]"

    @classmethod
    def this_process(cls) -> RunId:
        return cls(socket.gethostname().split(".")[0] or "localhost", os.getpid(),
                   _start_ticks(os.getpid()) or 0)  # fmt: skip


def run_of(job: JobRecord) -> RunId | None:
    """The run that submitted a validation job, from its comment (None: not marked)."""
    found = _MARK.search(job.comment)
    if not found:
        return None
    return RunId(found["host"], int(found["pid"]), int(found["start"]))


def comment_for(node: str, level: str, why: str, run: RunId) -> str:
    """What accounting keeps about the job: which node, which level, why, and whose run
    (its mark last, so a long `why` is cut, never the mark)."""
    head = f"nodecheck validate {node} level={level}: {why}"
    room = 250 - len(run.mark) - 1
    return f"{head[:room]} {run.mark}"


@dataclass(frozen=True)
class Claims:
    """What the validation jobs Slurm holds say about the nodes a run wants."""

    taken: dict[str, str]  # node -> why another run has it
    stale: tuple[int, ...]  # jobs that hold a node for nobody: cancel them


def sort_claims(
    jobs: Iterable[JobRecord],
    nodes: Iterable[str],
    me: RunId,
    alive: Callable[[RunId], bool | None],
    mine: Iterable[int] = (),
) -> Claims:
    """Before claiming (and, with `mine`, after): which of `nodes` another run has, and
    which jobs are stale. `alive(run)`: True/False for a run on this host, None for one
    elsewhere (it cannot be looked at; it owns its nodes). With `mine` (this run's job
    ids), a node whose lowest active job is another run's is taken: that run was first."""
    wanted, own = set(nodes), set(mine)
    holders: dict[str, list[JobRecord]] = {}
    stale = []
    for job in jobs:
        if not job.active:
            continue
        run = run_of(job)
        if job.launch_failed or (run is not None and run != me and alive(run) is False):
            stale.append(job.job_id)
        else:
            for node in wanted.intersection(_nodes_of(job)):
                holders.setdefault(node, []).append(job)
    taken = {}
    for node, held in holders.items():
        first = min(held, key=lambda j: j.job_id)
        if first.job_id in own:
            continue
        run = run_of(first)
        whose = f"run {run.host}:{run.pid}" if run else "a run that left no mark"
        taken[node] = f"being validated by another validate run ({whose}, job {first.job_id})"
    return Claims(taken, tuple(stale))


def _nodes_of(job: JobRecord) -> list[str]:
    """The nodes a job holds: one, or several (the fabric stage's job: "n[1-3]")."""
    from nodecheck import hostlist

    try:
        return hostlist.expand(job.node)
    except ValueError:
        return [job.node]


def alive_here(run: RunId) -> bool | None:
    """Whether a run of this host is still running (None: another host's, unknowable)."""
    if run.host != RunId.this_process().host:
        return None
    started = _start_ticks(run.pid)
    return started is not None and started == run.start


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@contextmanager
def validate_lock(path: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the validate runs' flock for the block: claims and reservation changes only.
    O_NOFOLLOW: a planted symlink is not followed (validate runs as root)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise ValidateBusy(
                        f"{path}: another validate run held the lock for {wait_s:.0f}s"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing releases the lock, on any way out
