"""Probe processes kept by the agent between runs: one per probe group, lent to one run
at a time.

A run forks one probe child per group (nodecheck.run.runner). Forked from the agent's
whole image at every job start, those children cost more than their checks: on a small
node the forks, their copy-on-write faults and their exits took most of a run's CPU
(docs/performance.md). So the agent forks one member per group once, ahead of the runs
(`ProbePool`), and lends the set to one run at a time (`lend`). The runner sends a member
its group's planned checks; the member runs them exactly as a forked child would
(runner.run_group) and waits for the next run.

What isolates a probe stays as it was:

- each member is a process of its own, detached like every probe child (isolate);
- the run SIGKILLs a member that hangs past a check's timeout, as it would its own child,
  and the agent forks a replacement (`settle`); a member that dies takes only its group's
  results with it;
- a member that ever hung is never lent again, dead or not: one asleep in the kernel (a
  stat on a hung mount, state D) outlives its SIGKILL until the kernel lets it go, and lent
  to the next run it would hang that run too (a healthy node drained for another node's
  mount). The run names the members it killed in its lease (`retire`) before it gives the
  pool back, and the agent replaces them before it lends the pool again;
- each request carries a pipe of the run's own for the results (SCM_RIGHTS on a
  SOCK_SEQPACKET pair, one message per request), so nothing a member wrote for an earlier
  run, one that was killed halfway, can reach a later one;
- what a run sets in its probe processes is set again for every request (its environment,
  its deadline, what the first look learnt about the state directory, the memory limit),
  and the per-process NVML snapshot is dropped, so every run reads the GPUs afresh.

A run that finds no member for a group, or a member gone, forks the group's child as
without the agent.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nodecheck.core import isolate

# A member's work on one request: the pickled request, and the run's pipe for the results.
Handler = Callable[[bytes, int], None]

MAX_REQUEST = 1 << 20  # a group's planned checks with their settings: a few KiB


@dataclass(frozen=True)
class Member:
    """One probe process of the pool: its group, its pid, and the run's end of its socket."""

    group: str
    pid: int
    control: int  # SOCK_SEQPACKET: one request per message, the reply pipe attached


# In a run the pool was lent to: group -> member (set in the agent's worker), and the
# descriptor whose closing gives them back.
_lent: dict[str, Member] = {}
_lease: list[int] = []
_hung: list[int] = []  # the lent members this run killed for hanging: never lent again
_lender: list[int] = []  # the agent's pid, as the run saw it when the pool was lent


def use(members: Iterable[Member], lease: int | None) -> None:
    """This run may ask these members (the agent's worker, before the run starts) until
    it gives them back (`give_back`, or its exit)."""
    _lent.clear()
    _lent.update((member.group, member) for member in members)
    _lease[:] = [] if lease is None else [lease]
    _hung.clear()
    _lender[:] = [os.getppid()] if _lent else []


def agent_gone() -> bool:
    """Whether the agent that lent this run its pool has died (killed mid-run: its members
    died with it). Asked in the run's own process, a child of the worker the agent forked."""
    return bool(_lender) and not _alive(_lender[0])


def retire(pid: int) -> None:
    """This run killed the lent member `pid` for hanging: the agent must not lend it again.
    Said in the lease at once: the run happens in a child of the worker (run/keeper.py),
    which holds the lease too, and the agent reads it before lending the pool again."""
    if any(member.pid == pid for member in _lent.values()) and pid not in _hung:
        _hung.append(pid)
        for fd in _lease:
            with contextlib.suppress(OSError):
                os.write(fd, f"{pid}\n".encode())


def give_back() -> None:
    """The run is over: the agent may lend the members to the next one (less those named
    in the lease as killed for hanging)."""
    while _lease:
        with contextlib.suppress(OSError):
            os.close(_lease.pop())
    _hung.clear()


def lent() -> dict[str, Member]:
    return dict(_lent)


def lent_fds() -> tuple[int, ...]:
    """The descriptors a run's own child must keep to use the lent members, and the lease
    to name those it killed for hanging in."""
    return tuple(member.control for member in _lent.values()) + tuple(_lease)


def ask(member: Member, planned: list[Any], memory_limit_mb: int, context: dict[str, Any]) -> int:
    """Send `member` a group's planned checks; the read end of the pipe its frames will
    come on. OSError when the member cannot take it (gone): the run forks the group."""
    read_fd, write_fd = isolate.pipe()
    try:
        request = pickle.dumps((planned, memory_limit_mb, context), pickle.HIGHEST_PROTOCOL)
        if len(request) > MAX_REQUEST:
            raise OSError(f"request of {len(request)} bytes is over {MAX_REQUEST}")
        control = socket.socket(fileno=member.control)
        try:
            control.setblocking(False)  # a member's queue is never full; a full one is gone
            socket.send_fds(control, [request], [write_fd])
        finally:
            control.detach()  # the descriptor stays the pool's
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd


class ProbePool:
    """In the agent: the members, who has them, and their replacements."""

    def __init__(self, groups: Iterable[str], handle: Handler) -> None:
        # What a member does with a run's request (runner.serve_request): given, not
        # imported, so the pool stays below the runner that borrows it.
        self.handle = handle
        self.members: dict[str, Member] = {}
        self._lease: int | None = None  # read end: at EOF once the borrower gave them back
        self._said = b""  # what the borrower wrote in the lease: the members it killed
        # Members retired for hanging that had not ended when they were replaced, with
        # their group: the agent's status and log name them until they are reaped.
        self.stuck: dict[int, str] = {}
        for group in sorted(set(groups)):
            self._spawn(group)

    def _spawn(self, group: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = isolate.fork_detached(keep_fd=theirs.fileno())
        except OSError:
            ours.close()
            theirs.close()
            return  # no member for this group: its runs fork the group
        if pid == 0:
            code = 0
            try:
                serve(theirs, self.handle)
            except BaseException:
                code = 70
            finally:
                os._exit(code)
        theirs.close()
        self.members[group] = Member(group, pid, ours.detach())

    def lend(self) -> tuple[list[Member], int | None]:
        """The members for the next run, and the lease its worker holds while it uses them
        (closing it, or exiting, gives them back); none while another run has them."""
        if self._lease is not None:
            if not self._given_back():
                return [], None
            os.close(self._lease)
            self._lease = None
            said, self._said = self._said, b""
            for word in said.split():
                if word.isdigit():
                    self._retire(int(word))
        self._lease, lease = isolate.pipe()
        return list(self.members.values()), lease

    def _given_back(self) -> bool:
        """Whether the borrower closed its lease; what it wrote there is kept."""
        assert self._lease is not None
        while select.select([self._lease], [], [], 0)[0]:
            chunk = os.read(self._lease, 4096)
            if not chunk:
                return True
            self._said += chunk
        return False

    def _retire(self, pid: int) -> None:
        """A member a run killed for hanging: replaced now, whether it has ended or not
        (one asleep in the kernel ends only when the kernel lets it go; `settle` then reaps
        it)."""
        for group, member in list(self.members.items()):
            if member.pid == pid:
                os.close(member.control)
                del self.members[group]
                self._spawn(group)
                if _alive(pid):
                    self.stuck[pid] = group
                from nodecheck.log import get_logger

                get_logger().warning(
                    "agent_probe_retired", group=group, pid=pid, still_alive=pid in self.stuck
                )

    def settle(self, pid: int) -> None:
        """A child of the agent has ended: a member that died (killed by a run for hanging,
        or crashed) is replaced."""
        self.stuck.pop(pid, None)
        for group, member in list(self.members.items()):
            if member.pid == pid:
                os.close(member.control)
                del self.members[group]
                self._spawn(group)

    def forget_lease(self) -> None:
        """In a forked worker: the lease's read end is the agent's, not ours."""
        if self._lease is not None:
            os.close(self._lease)
            self._lease = None

    def close(self) -> None:
        """Let every member go (each exits when its socket ends), and end any still busy."""
        if self._lease is not None:
            os.close(self._lease)
            self._lease = None
        for member in self.members.values():
            with contextlib.suppress(OSError):
                os.close(member.control)
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.pid, signal.SIGKILL)
        self.members.clear()


def _alive(pid: int) -> bool:
    """Whether our child `pid` has not ended yet (a zombie has ended: not alive)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def serve(control: socket.socket, handle: Handler) -> None:
    """A member's life: one request at a time, until the agent's end of the socket closes
    (the agent stopped: members also die with it)."""
    import faulthandler

    from nodecheck.probes import kernlog

    faulthandler.disable()  # a crash is reported by the run, not into /dev/null
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    kernlog.follow_here()  # a long-lived process reads the kernel log as it grows
    while True:
        message, fds, _flags, _addr = socket.recv_fds(control, MAX_REQUEST, 1)
        if not message and not fds:
            return
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        try:
            handle(message, fds[0])
        except OSError:
            pass  # the run has gone (its pipe broke): wait for the next one
        finally:
            os.close(fds[0])


def run_context() -> dict[str, Any]:
    """What a run has set that its probe processes act on: a forked child inherits it, a
    member is told with every request."""
    from nodecheck.store import state

    return {
        "environ": dict(os.environ),
        "deadline": state.run_deadline(),
        "responsive": state.known_responsive(),
    }
