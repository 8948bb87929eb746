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
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal

_PR_SET_PDEATHSIG = 1
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


def fork_detached(keep_fd: int) -> int:
    """os.fork(), with the child detached from the hook as above; keeps `keep_fd` open in the
    child. Returns like os.fork (0 in the child). Raises OSError when fork fails."""
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
        for std in (0, 1, 2):
            os.dup2(devnull, std)
        # close_range(2) under the hood: cheap however many descriptors the hook inherited.
        os.closerange(3, keep_fd)
        os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX"))
    except BaseException:
        os._exit(1)
    return 0
