"""Call something that may block forever (stat on a hung NFS mount) with a deadline.

`call_all_with_deadline`: the call runs in a daemon thread; if it has not returned by the
deadline we stop waiting and report it as hung. The thread may stay stuck in the kernel, but
the check's child process exits with os._exit, which does not wait for it.

`run_command`: a program run with a deadline that is never outwaited by a program stuck in
the kernel (see there).
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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


def run_command(
    args: list[str], timeout_s: float, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """subprocess.run(args, capture_output=True, text=True) within `timeout_s`, stdin from
    /dev/null. At the deadline the program is killed, and if it does not end at once it is
    left behind rather than waited for: a program asleep in the kernel (scontrol reading a
    slurm.conf on an NFS mount that stopped answering) does not die of SIGKILL, and
    subprocess.run's own kill-then-wait would hang with it. Raises subprocess.TimeoutExpired
    at the deadline, OSError when it cannot start."""
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        # Not ended at once: reaped by init once the kernel lets it go and we are gone.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(KILLED_GRACE_S)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)
