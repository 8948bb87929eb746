"""Forked helper processes that can hang without holding the hook.

Probes (nodecheck.run.runner) and state-directory access (nodecheck.store.state) run in
children that may get stuck in the kernel: a stat on a hung NFS mount sleeps in state D,
where even SIGKILL does not reach it. Such a child must not keep what slurmd waits on, and
must not outlive the hook when the hook itself is killed:

- slurmd waits for EOF on the prolog's stdout and stderr, not only for its exit. A child
  holding a copy of them holds the job start until PrologEpilogTimeout, and each later
  prolog adds one more. So the child's stdin, stdout and stderr become /dev/null and every
  other inherited descriptor is closed, except the one it reports through.
- PR_SET_PDEATHSIG: the kernel sends SIGKILL to the child when the process that forked it
  dies, also by kill -9, where no cleanup code of ours runs.

`stat_answers` uses such a child to ask whether a path's filesystem answers at all, before
the hook itself touches it (the state directory, the log file's directory).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import pickle
import select
import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_FRAME_HEADER = struct.Struct("!I")
_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL:
    # Loaded in the parent, once, so each child does not pay for it after the fork.
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def pipe() -> tuple[int, int]:
    """os.pipe() with both ends above stderr: a hook started with a closed stdin would
    otherwise get fd 0 for the pipe, which the child replaces with /dev/null."""
    ends = []
    for fd in os.pipe():
        if fd < 3:
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(fd)
            fd = high
        ends.append(fd)
    return ends[0], ends[1]


def fork_detached(
    keep_fd: int, output_fd: int | None = None, keep_also: tuple[int, ...] = ()
) -> int:
    """os.fork(), with the child detached from the hook as above; keeps `keep_fd` (and
    `keep_also`) open in the child. With `output_fd`, the child's stdout and stderr go there
    (a pipe its parent reads) instead of /dev/null. Returns like os.fork (0 in the child).
    Raises OSError when fork fails."""
    libc = _load_libc()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        for std in (1, 2):
            os.dup2(devnull if output_fd is None else output_fd, std)
        # close_range(2) under the hood: cheap however many descriptors the hook inherited.
        low = 3
        for kept in sorted({keep_fd, *keep_also}):
            os.closerange(low, kept)
            low = kept + 1
        os.closerange(low, os.sysconf("SC_OPEN_MAX"))
    except BaseException:
        os._exit(1)
    return 0


def send_frame(fd: int, message: tuple[Any, ...]) -> None:
    """Send `message` to the parent: a length-prefixed pickle (read back by take_frames)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    data = _FRAME_HEADER.pack(len(payload)) + payload
    while data:
        data = data[os.write(fd, data) :]


def read_available(fd: int, take: Callable[[bytes], None]) -> bool:
    """Hand what can be read from `fd` now, chunk by chunk, to `take`, without blocking;
    False once the pipe is at end of file (the writer has gone)."""
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        take(chunk)


def take_frames(buffer: bytes) -> tuple[list[tuple[Any, ...]], bytes]:
    """The complete messages at the start of `buffer`, and what is left of it."""
    frames = []
    while len(buffer) >= _FRAME_HEADER.size:
        (size,) = _FRAME_HEADER.unpack_from(buffer)
        end = _FRAME_HEADER.size + size
        if len(buffer) < end:
            break
        frames.append(pickle.loads(buffer[_FRAME_HEADER.size : end]))  # noqa: S301 (our own child)
        buffer = buffer[end:]
    return frames, buffer


def stat_answers(path: Path, timeout_s: float) -> bool:
    """Whether a stat of `path` returns at all within `timeout_s`, asked from a detached
    child; one that hangs is killed and left to the kernel. Any answer counts, an error
    too: a missing path has still been looked up through the filesystem it would be on.
    Raises OSError when no child can be started."""
    read_fd, write_fd = pipe()
    try:
        pid = fork_detached(keep_fd=write_fd)
        if pid == 0:
            try:
                with contextlib.suppress(OSError):
                    os.stat(path)
                os.write(write_fd, b"y")
            finally:
                os._exit(0)
        os.close(write_fd)
        write_fd = -1
        ready, _, _ = select.select([read_fd], [], [], max(0.0, timeout_s))
        answered = bool(ready) and os.read(read_fd, 1) == b"y"
        if not answered:
            os.kill(pid, signal.SIGKILL)  # ends it now, or as soon as the kernel lets go
        _reap_if_done(pid)
        return answered
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def _reap_if_done(pid: int) -> None:
    """Collect the child if it ends soon; one stuck in the kernel is left (init reaps it
    once the filesystem lets it go)."""
    with contextlib.suppress(ChildProcessError):
        wait_exit(pid, 0.05)


def wait_exit(pid: int, timeout_s: float) -> int | None:
    """Reap child `pid` once it has exited, waiting at most `timeout_s`: its wait status,
    or None while it is still running; ChildProcessError when it is not our child (any
    more). Waits on a pidfd, readable the moment the child exits, instead of sleeping
    between polls."""
    got, status = os.waitpid(pid, os.WNOHANG)
    if got:
        return status
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # no pidfd on this kernel (before 5.3): poll
        return _poll_exit(pid, timeout_s)
    try:
        select.select([fd], [], [], max(0.0, timeout_s))
    finally:
        os.close(fd)
    got, status = os.waitpid(pid, os.WNOHANG)
    return status if got else None


def _poll_exit(pid: int, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    pause = 0.0002
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
