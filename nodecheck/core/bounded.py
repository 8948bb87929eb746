"""Call something that may block forever (stat on a hung NFS mount) with a deadline.

`call_all_with_deadline`: the call runs in a daemon thread; if it has not returned by the
deadline we stop waiting and report it as hung. The thread may stay stuck in the kernel, but
the check's child process exits with os._exit, which does not wait for it.

`start` and `collect`: a program run with a deadline that is never outwaited by a program
stuck in the kernel (see `collect`). Slurm's commands go through them (`run_command`), and
so do the measurement tools (probes/active/tools.py), each in a session of its own so that
the tool's children die with it.
"""

from __future__ import annotations

import contextlib
import locale
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any


@dataclass(frozen=True)
class Outcome:
    """One bounded call: finished in time or not, and its value or error."""

    finished: bool
    value: Any = None
    error: BaseException | None = None


def call_all_with_deadline(
    calls: dict[str, Callable[[], Any]], timeout_s: float
) -> dict[str, Outcome]:
    """Run every call concurrently; give each the same deadline."""
    boxes: dict[str, list[Any]] = {key: [] for key in calls}

    def runner(key: str, fn: Callable[[], Any]) -> None:
        try:
            boxes[key].append(Outcome(True, value=fn()))
        except BaseException as exc:  # reported, never raised across the thread
            boxes[key].append(Outcome(True, error=exc))

    threads = {
        key: threading.Thread(target=runner, args=(key, fn), daemon=True, name=f"bounded:{key}")
        for key, fn in calls.items()
    }
    for thread in threads.values():
        thread.start()
    deadline = time.monotonic() + timeout_s
    for thread in threads.values():
        thread.join(max(0.0, deadline - time.monotonic()))
    return {key: (boxes[key][0] if boxes[key] else Outcome(False)) for key in calls}


# How long a killed program may take to go before it is left behind, stuck in the kernel.
KILLED_GRACE_S = 0.1


@dataclass(frozen=True)
class Ran:
    """How one program ended: its exit status (None: killed at the deadline) and the
    output it wrote, all of it or, when killed, what it had written by then."""

    returncode: int | None
    stdout: str
    stderr: str


def start(
    args: Sequence[str],
    env: dict[str, str] | None,
    *,
    own_session: bool = False,
    errors: str = "strict",
) -> subprocess.Popen[str]:
    """Start `args` (an argument list, never a shell) with stdin from /dev/null and its
    output captured as text. `own_session`: a new session, so that `collect` can kill it
    with every child it started. OSError when it cannot start."""
    return subprocess.Popen(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors=errors,
        start_new_session=own_session,
        env=env,
    )


def collect(
    proc: subprocess.Popen[str],
    timeout_s: float,
    *,
    kill_session: bool = False,
    grace_s: float = KILLED_GRACE_S,
) -> Ran:
    """Wait up to `timeout_s` for `proc` to end and read all it wrote. At the deadline it
    is killed (with its whole session when `kill_session`: start it with own_session) and
    given `grace_s` to go; one that does not is left behind rather than waited for. A
    program asleep in the kernel (scontrol reading a slurm.conf on an NFS mount that
    stopped answering) does not die of SIGKILL, and subprocess.run's own kill-then-wait
    would hang with it; a grandchild that left the session would hold the pipes open."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return Ran(proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        pass
    if kill_session:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()
    try:
        out, err = proc.communicate(timeout=grace_s)  # what it wrote before the kill, to EOF
        return Ran(None, out or "", err or "")
    except subprocess.TimeoutExpired as exc:
        # Not ended in time: reaped by init once the kernel lets it go and we are gone.
        partial = Ran(None, _text(proc.stdout, exc.stdout), _text(proc.stderr, exc.stderr))
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return partial


def _text(stream: IO[str] | None, data: bytes | str | None) -> str:
    """What communicate() had read when it gave up (bytes, even for a text stream), as the
    text it would have returned; the cut may fall inside a character, hence "replace"."""
    if not data:
        return ""
    if isinstance(data, str):
        return data
    encoding = getattr(stream, "encoding", None) or locale.getpreferredencoding(False)
    text = data.decode(encoding, "replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as universal newlines do


def run_command(
    args: list[str], timeout_s: float, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """subprocess.run(args, capture_output=True, text=True) within `timeout_s`, stdin from
    /dev/null, never outwaited by a program stuck in the kernel (`collect`). Raises
    subprocess.TimeoutExpired at the deadline, OSError when it cannot start."""
    ran = collect(start(args, env), timeout_s)
    if ran.returncode is None:
        raise subprocess.TimeoutExpired(args, timeout_s, output=ran.stdout, stderr=ran.stderr)
    return subprocess.CompletedProcess(args, ran.returncode, ran.stdout, ran.stderr)
