"""Run checks concurrently, each group in its own forked child with a hard deadline.

A probe that hangs (NVML on a GPU that fell off the bus, stat on a dead NFS server)
cannot be interrupted from inside Python, so it runs in a child process that is
SIGKILLed at its deadline. The run as a whole never outlasts its budget: a hung probe
becomes a FAIL of that probe; a check that raises, or a child that dies, an ERROR.
Checks of one group run one after another in one child: each is cut at its own timeout_s,
the group as a whole at the sum of them (never past the run's budget); a hang leaves the
checks after it "not run" (SKIP), so the hung check is the one that fails and leads the reason.

Children are forked by nodecheck.core.isolate: they hold none of the hook's descriptors and
die with it. A child that ends while one of its threads is stuck in the kernel (a bounded
statvfs on a hung mount) cannot exit fully, so its pipe never reaches EOF: it says "end"
once its last result is sent, and the runner stops waiting for it there.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import pickle
import resource
import selectors
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from nodecheck.checks import boundary
from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Check
from nodecheck.core import isolate, progress
from nodecheck.core.results import CheckResult, Status
from nodecheck.run import pool
from nodecheck.store.state import StateError

_NOTE_MAX = 200  # a note is a call and its argument: "statvfs(/home)", "nvmlDeviceGet... gpu3"


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
    planned: list[Planned]
    started: float
    group_deadline: float  # the sum of the group's timeouts (or the run's end)
    deadline: float  # that, or sooner: the running check's own timeout
    buffer: bytes = b""
    current: str = ""
    current_started: float = 0.0
    last_note: str = ""
    ended: bool = False  # the child said "end": every result is in
    exited: bool = False  # reaped already
    done: bool = False
    pooled: bool = False  # the agent's probe process: not ours to reap


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
        error = boundary.internal(item.check.id, exc)
        if isinstance(exc, StateError):  # the site's state_dir, not a bug: say which and why
            error = replace(error, message=f"state unusable: {exc}"[:300], traceback="")
        results = [error]
    took = time.monotonic() - started
    return [replace(r, duration_s=took) for r in results]


def _child_main(fd: int, planned: list[Planned], memory_limit_mb: int) -> None:
    faulthandler.disable()  # a crash is reported by the parent, not into /dev/null
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    limit_memory(memory_limit_mb)
    run_group(fd, planned)


def limit_memory(memory_limit_mb: int) -> None:
    """This probe process's address-space limit (0: none). The soft limit only, under the
    hard one: a pool's member is set again for every run, and raising a hard limit takes a
    capability a node's root may not have."""
    with contextlib.suppress(ValueError, OSError):
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        limit = hard
        if memory_limit_mb > 0:
            wanted = memory_limit_mb * 1024 * 1024
            limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run_group(fd: int, planned: list[Planned]) -> None:
    """In a probe process: run a group's checks one after another, reporting each start,
    note and result on `fd` as it happens, then "end"."""
    progress.set_sink(lambda text: isolate.send_frame(fd, ("note", text[:_NOTE_MAX])))
    for item in planned:
        isolate.send_frame(fd, ("start", item.check.id))
        isolate.send_frame(fd, ("done", item.check.id, _run_one(item)))
    isolate.send_frame(fd, ("end",))


def _fork_group(planned: list[Planned], run_deadline: float, memory_limit_mb: int) -> _Child:
    read_fd, write_fd = isolate.pipe()
    try:
        pid = isolate.fork_detached(keep_fd=write_fd)
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # child
        code = 0
        try:
            _child_main(write_fd, planned, memory_limit_mb)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    return _watching(pid, read_fd, planned, run_deadline)


def _ask_member(
    member: pool.Member,
    planned: list[Planned],
    run_deadline: float,
    memory_limit_mb: int,
    context: dict[str, Any],
) -> _Child | None:
    """The group handed to the agent's probe process for it (nodecheck.run.pool), with the
    run's context (pool.run_context); None when that member is gone (the group is forked
    instead)."""
    try:
        fd = pool.ask(member, planned, memory_limit_mb, context)
    except OSError:
        return None
    return _watching(member.pid, fd, planned, run_deadline, pooled=True)


def _watching(
    pid: int, fd: int, planned: list[Planned], run_deadline: float, pooled: bool = False
) -> _Child:
    os.set_blocking(fd, False)
    now = time.monotonic()
    # The checks of a group run one after another: the group needs the sum of their times.
    group_deadline = min(now + sum(p.timeout_s for p in planned), run_deadline)
    return _Child(pid, fd, planned, now, group_deadline, group_deadline, pooled=pooled)


def _group_memory_limit(planned: list[Planned], run_limit_mb: int) -> int:
    """The child's address-space limit: the run's, unless a check of the group declares its
    own (0 = none: PyTorch maps far more address space than it uses); then the largest."""
    own = [p.check.memory_limit_mb for p in planned if p.check.memory_limit_mb is not None]
    if not own:
        return run_limit_mb
    return 0 if 0 in own else max(own)


def _drain_frames(child: _Child, results: dict[str, list[CheckResult]]) -> None:
    frames, child.buffer = isolate.take_frames(child.buffer)
    for frame in frames:
        kind = frame[0]
        if kind == "note":
            child.last_note = frame[1]
        elif kind == "start":
            # Each check of a group keeps its own timeout_s, within the group's deadline.
            now = time.monotonic()
            child.current, child.current_started, child.last_note = frame[1], now, ""
            own = next(p.timeout_s for p in child.planned if p.check.id == frame[1])
            child.deadline = min(child.group_deadline, now + own)
        elif kind == "done":
            results[frame[1]] = frame[2]
        elif kind == "end":
            child.ended = True


def _read_available(child: _Child, results: dict[str, list[CheckResult]]) -> bool:
    """Take in what the child has written so far; False once its pipe is at EOF."""

    def take(chunk: bytes) -> None:
        child.buffer += chunk
        _drain_frames(child, results)

    return isolate.read_available(child.fd, take)


def _reap(pid: int, patience_s: float = 0.5) -> str:
    """Describe how a finished child ended (without blocking on one stuck in the kernel).
    A child that said "end" is normally gone within a millisecond."""
    try:
        status = isolate.wait_exit(pid, patience_s)
    except ChildProcessError:
        return "gone"
    if status is None:
        return "still exiting"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.WEXITSTATUS(status)}"


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _finish(child: _Child, results: dict[str, list[CheckResult]], timed_out: bool) -> list[Planned]:
    """Close `child`'s books: the results it gave, a FAIL for the check that hung, SKIP for
    those its hang kept from running, ERROR for those of a probe process that died. The
    checks of a lent pool member that went away (the agent was killed: its members die
    with it) are returned instead, for the run to fork them itself: losing the agent is no
    reason to let a job start on a node nothing looked at."""
    child.done = True
    if timed_out:
        _read_available(child, results)  # the last note or result may have just arrived
    os.close(child.fd)
    ended = ""
    if timed_out:
        _kill(child.pid)  # a pool's member too: the agent reaps it and forks another
        if child.pooled:
            pool.retire(child.pid)  # even if it outlives the kill, asleep in the kernel
        else:
            _reap(child.pid)
    elif child.ended:
        # Every result is in: its exit is not waited for (run_checks collects it at the end),
        # and a pool's member waits for the next run.
        child.exited = child.pooled or _reap(child.pid, patience_s=0.0) != "still exiting"
    elif child.pooled and pool.agent_gone():
        return [item for item in child.planned if item.check.id not in results]
    elif child.pooled:
        ended = "the agent's probe process is gone"  # the agent reaps it and forks another
    else:
        ended = _reap(child.pid, patience_s=0.5)
        if ended == "still exiting":
            _kill(child.pid)
    now = time.monotonic()
    waited = now - child.started
    hung_for = now - (child.current_started or child.started)
    missing = [item.check.id for item in child.planned if item.check.id not in results]
    # The check that hung is the one running; if the child was cut before it said which
    # (between checks, or before the first), the next one due: a cut group always FAILs.
    hung = child.current if child.current in missing else (missing[0] if missing else "")
    for cid in missing:
        if not timed_out:
            msg = f"internal error: probe process ended without a result ({ended})"
            results[cid] = [CheckResult(cid, Status.ERROR, msg, duration_s=waited)]
        elif cid == hung:
            step = f"in {child.last_note}" if child.last_note else "(no step noted)"
            msg = f"probe hung after {hung_for:.1f}s {step}"
            results[cid] = [
                CheckResult(cid, Status.FAIL, msg, values={"hung": True}, duration_s=waited)
            ]
        else:
            # Unknown, not failed: blaming it would put a check that never ran (or found
            # nothing to do) ahead of the one that hung in the drain reason.
            msg = f"not run: an earlier probe in its group ({hung}) hung"
            values = {"not_run": True, "hung_check": hung}
            results[cid] = [CheckResult(cid, Status.SKIP, msg, values=values, duration_s=waited)]
    return []


def run_checks(
    planned: Iterable[Planned],
    budget_s: float,
    memory_limit_mb: int = 0,
    started: Callable[[], None] | None = None,
) -> list[CheckResult]:
    """Run every planned check; always returns within budget_s (plus reaping slack).
    `started` is called once every probe process has been forked or asked."""
    planned = list(planned)
    if not planned:
        return []
    run_deadline = time.monotonic() + budget_s
    groups: dict[str, list[Planned]] = {}
    for item in planned:
        groups.setdefault(item.check.probe_group, []).append(item)
    results: dict[str, list[CheckResult]] = {}
    children, fork_error = _fork_all(groups, run_deadline, memory_limit_mb)
    if started is not None:
        started()
    if fork_error:
        msg = f"internal error: {fork_error}"[:300]
        return [CheckResult(item.check.id, Status.ERROR, msg) for item in planned]
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
                if not _read_available(child, results) or child.ended:
                    selector.unregister(child.fd)
                    orphaned = _finish(child, results, timed_out=False)
                    if orphaned:  # a lent member gone: the rest of its group forked here
                        limit = _group_memory_limit(orphaned, memory_limit_mb)
                        again = _refork(orphaned, run_deadline, limit, results)
                        if again is not None:
                            children.append(again)
                            selector.register(again.fd, selectors.EVENT_READ, again)
    _collect_the_ended(children)
    return [r for item in planned for r in results[item.check.id]]


def _refork(
    orphaned: list[Planned],
    run_deadline: float,
    memory_limit_mb: int,
    results: dict[str, list[CheckResult]],
) -> _Child | None:
    """The checks a vanished pool member left, in a child of this run; when even that
    cannot start, nodecheck's ERROR for each (never the node's FAIL)."""
    try:
        return _fork_group(orphaned, run_deadline, memory_limit_mb)
    except OSError as exc:
        msg = f"internal error: the agent's probe process is gone and no other starts: {exc}"
        for item in orphaned:
            results[item.check.id] = [CheckResult(item.check.id, Status.ERROR, msg[:300])]
        return None


def _collect_the_ended(children: list[_Child]) -> None:
    """Reap the children that said "end" and have exited by now, without waiting for them.
    One still there either is on its way out (it dies with the run, and init reaps it) or
    has a thread stuck in the kernel (the bounded statvfs of a hung mount): SIGKILL ends the
    rest of it the moment it wakes."""
    for child in children:
        if child.ended and not child.exited and _reap(child.pid, patience_s=0.0) == "still exiting":
            _kill(child.pid)


def _fork_all(
    groups: dict[str, list[Planned]], run_deadline: float, memory_limit_mb: int
) -> tuple[list[_Child], str]:
    """One probe process per group: the agent's for it when this run was lent the probe
    pool, else a child forked now. When a fork fails, none and why: the children already
    started are killed first, so a run that could not start leaves no probe behind."""
    members = pool.lent()
    context = pool.run_context() if members else {}
    children: list[_Child] = []
    try:
        for name, group in groups.items():
            limit = _group_memory_limit(group, memory_limit_mb)
            member = members.get(name)
            child = _ask_member(member, group, run_deadline, limit, context) if member else None
            children.append(child or _fork_group(group, run_deadline, limit))
    except OSError as exc:
        for child in children:
            _kill(child.pid)
            os.close(child.fd)
            _reap(child.pid)
        return [], f"cannot start a probe process: {type(exc).__name__}: {exc}"
    return children, ""


def serve_request(message: bytes, reply: int) -> None:
    """In a pool member (pool.serve): run one run's planned group as a forked child would,
    with what that run set (its environment, deadline, state look, memory limit)."""
    from nodecheck.probes import nvml
    from nodecheck.store import state

    planned, memory_limit_mb, context = pickle.loads(message)  # noqa: S301 (our own run)
    limit_memory(memory_limit_mb)
    os.environ.clear()
    os.environ.update(context["environ"])
    state.set_run_deadline(context["deadline"])
    state.reset_responsive(context["responsive"])
    nvml.clear_cache()
    run_group(reply, planned)
