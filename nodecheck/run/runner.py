"""Run checks concurrently, each group in its own forked child with a hard deadline.

A probe that hangs (NVML on a GPU that fell off the bus, stat on a dead NFS server)
cannot be interrupted from inside Python, so it runs in a child process that is
SIGKILLed at its deadline. The run as a whole never outlasts its budget: a hung probe
becomes a FAIL of that probe; a check that raises, or a child that dies, an ERROR.
Checks of one group run one after another in one child: each is cut at its own timeout_s,
the group as a whole at its longest (a deep group: their sum), and a hang fails the checks
after it as "not run". A check may declare its own memory limit for its child.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import mmap
import os
import pickle
import resource
import selectors
import signal
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Check
from nodecheck.run import progress
from nodecheck.run.results import CheckResult, Status

_HEADER = struct.Struct("!I")
# A probe's progress notes (nodecheck.run.progress) go to a page shared with the parent, not
# down the pipe: the real NVML adapter notes every call (hundreds per run on an 8-GPU node)
# and the parent needs only the last one, only when the probe hangs.
_NOTE_SLOT = 4096
_NOTE_LEN = struct.Struct("=H")


@dataclass(frozen=True)
class Planned:
    """A check to run, with its context and timeout."""

    check: Check
    ctx: CheckContext
    timeout_s: float


@dataclass
class _Child:
    """Parent-side bookkeeping for one forked group (mutable while the run goes on)."""

    pid: int
    fd: int
    slot: mmap.mmap
    planned: list[Planned]
    started: float
    group_deadline: float  # the group's longest timeout (or the run's end)
    deadline: float  # that, or sooner: the running check's own timeout
    buffer: bytes = b""
    current: str = ""
    current_started: float = 0.0
    done: bool = False


def _send(fd: int, message: tuple) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    data = _HEADER.pack(len(payload)) + payload
    while data:
        data = data[os.write(fd, data) :]


def _write_note(slot: mmap.mmap, text: str) -> None:
    data = text.encode(errors="replace")[: _NOTE_SLOT - _NOTE_LEN.size]
    slot[_NOTE_LEN.size : _NOTE_LEN.size + len(data)] = data
    slot[: _NOTE_LEN.size] = _NOTE_LEN.pack(len(data))


def _read_note(slot: mmap.mmap) -> str:
    """The child's last note; read only once the child is stopped, so never half-written."""
    (size,) = _NOTE_LEN.unpack(slot[: _NOTE_LEN.size])
    return slot[_NOTE_LEN.size : _NOTE_LEN.size + size].decode(errors="replace")


def _run_one(item: Planned) -> list[CheckResult]:
    started = time.monotonic()
    try:
        results = list(item.check.func(item.ctx))
        if not results:
            raise RuntimeError("check returned no result")
        for r in results:
            if not isinstance(r, CheckResult) or r.check_id != item.check.id:
                raise TypeError(f"check returned {r!r}, not a CheckResult of its own id")
    except BaseException as exc:  # reported as ERROR: nodecheck's fault, not the node's
        import traceback

        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" at {os.path.basename(where.filename)}:{where.lineno}" if where else ""
        msg = f"internal error: {type(exc).__name__}: {exc}{at}"
        results = [CheckResult(item.check.id, Status.ERROR, msg[:300])]
    took = time.monotonic() - started
    return [replace(r, duration_s=took) for r in results]


def _child_main(fd: int, slot: mmap.mmap, planned: list[Planned], memory_limit_mb: int) -> None:
    faulthandler.disable()  # a crash is reported by the parent, not dumped into slurmd's log
    gc.enable()  # the parent may run without it (nodecheck.__main__); a probe may loop long
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if memory_limit_mb > 0:
        limit = memory_limit_mb * 1024 * 1024
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    progress.set_sink(lambda text: _write_note(slot, text))
    for item in planned:
        _write_note(slot, "")  # a note left by the previous check is not this one's
        _send(fd, ("start", item.check.id))
        _send(fd, ("done", item.check.id, _run_one(item)))


def _fork_group(planned: list[Planned], run_deadline: float, memory_limit_mb: int) -> _Child:
    read_fd, write_fd = os.pipe()
    slot = mmap.mmap(-1, _NOTE_SLOT)  # anonymous and shared: the child writes, we read
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_fd)
            _child_main(write_fd, slot, planned, memory_limit_mb)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    now = time.monotonic()
    group_deadline = min(now + _group_timeout(planned), run_deadline)
    return _Child(pid, read_fd, slot, planned, now, group_deadline, group_deadline)


def _group_timeout(planned: list[Planned]) -> float:
    """How long a group's child may live. Probes that share a session (NVML) answer in
    moments, so the group gets its longest timeout; deep checks measure for their whole
    time, one after another, so a deep group gets the sum of theirs."""
    timeouts = [p.timeout_s for p in planned]
    if any(p.check.tier == "deep" for p in planned):
        return sum(timeouts)
    return max(timeouts)


def _group_memory_limit(planned: list[Planned], run_limit_mb: int) -> int:
    """The child's address-space limit: the run's, unless a check of the group declares its
    own (0 = none: PyTorch maps far more address space than it uses); then the largest."""
    own = [p.check.memory_limit_mb for p in planned if p.check.memory_limit_mb is not None]
    if not own:
        return run_limit_mb
    return 0 if 0 in own else max(own)


def _drain_frames(child: _Child, results: dict[str, list[CheckResult]]) -> None:
    while len(child.buffer) >= _HEADER.size:
        (size,) = _HEADER.unpack_from(child.buffer)
        if len(child.buffer) < _HEADER.size + size:
            return
        frame = pickle.loads(child.buffer[_HEADER.size : _HEADER.size + size])  # noqa: S301 (our own child)
        child.buffer = child.buffer[_HEADER.size + size :]
        kind = frame[0]
        if kind == "start":
            # Each check of a group keeps its own timeout_s; the group as a whole, the longest.
            now = time.monotonic()
            child.current, child.current_started = frame[1], now
            own = next(p.timeout_s for p in child.planned if p.check.id == frame[1])
            child.deadline = min(child.group_deadline, now + own)
        elif kind == "done":
            results[frame[1]] = frame[2]


def _reap(pid: int, patience_s: float = 0.5) -> str:
    """Describe how a finished child ended (without blocking on one stuck in the kernel).

    A child whose pipe reached EOF is normally a zombie within microseconds, so poll fast
    first and back off: a fixed 10 ms sleep here cost every probe group 5-10 ms of wall time.
    """
    give_up = time.monotonic() + patience_s
    pause = 0.0002
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return "gone"
        if got:
            if os.WIFSIGNALED(status):
                return f"killed by signal {os.WTERMSIG(status)}"
            return f"exit code {os.WEXITSTATUS(status)}"
        if time.monotonic() >= give_up:
            return "still exiting"
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def _finish(child: _Child, results: dict[str, list[CheckResult]], timed_out: bool) -> None:
    child.done = True
    os.close(child.fd)
    ended, last_note = "", ""
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        _reap(child.pid)
        last_note = _read_note(child.slot)
    else:
        ended = _reap(child.pid)
    child.slot.close()
    now = time.monotonic()
    waited = now - child.started
    hung_for = now - (child.current_started or child.started)
    for item in child.planned:
        cid = item.check.id
        if cid in results:
            continue
        if not timed_out:
            msg = f"internal error: probe process ended without a result ({ended})"
            results[cid] = [CheckResult(cid, Status.ERROR, msg, duration_s=waited)]
        elif cid == child.current:
            step = f"; last step: {last_note}" if last_note else ""
            msg = f"probe hung: no answer within {hung_for:.1f}s{step}"
            results[cid] = [
                CheckResult(cid, Status.FAIL, msg, values={"hung": True}, duration_s=waited)
            ]
        else:
            msg = f"not run: an earlier probe in its group ({child.current}) hung"
            results[cid] = [
                CheckResult(cid, Status.FAIL, msg, values={"hung": True}, duration_s=waited)
            ]


def run_checks(
    planned: Iterable[Planned], budget_s: float, memory_limit_mb: int = 0
) -> list[CheckResult]:
    """Run every planned check; always returns within budget_s (plus reaping slack)."""
    planned = list(planned)
    if not planned:
        return []
    run_deadline = time.monotonic() + budget_s
    groups: dict[str, list[Planned]] = {}
    for item in planned:
        groups.setdefault(item.check.group or item.check.id, []).append(item)
    results: dict[str, list[CheckResult]] = {}
    # Frozen objects are never scanned by a child's collector, so the children do not
    # touch (and copy-on-write) the whole inherited heap when they collect their own garbage.
    gc.freeze()
    try:
        children = [
            _fork_group(g, run_deadline, _group_memory_limit(g, memory_limit_mb))
            for g in groups.values()
        ]
    finally:
        gc.unfreeze()
    with selectors.DefaultSelector() as selector:
        for child in children:
            selector.register(child.fd, selectors.EVENT_READ, child)
        while any(not c.done for c in children):
            now = time.monotonic()
            for child in children:
                if not child.done and now >= child.deadline:
                    selector.unregister(child.fd)
                    _finish(child, results, timed_out=True)
            pending = [c.deadline for c in children if not c.done]
            if not pending:
                break
            for key, _ in selector.select(max(0.0, min(pending) - now)):
                child = key.data
                try:
                    chunk = os.read(child.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if chunk:
                    child.buffer += chunk
                    _drain_frames(child, results)
                else:
                    selector.unregister(child.fd)
                    _finish(child, results, timed_out=False)
    return [r for item in planned for r in results[item.check.id]]
