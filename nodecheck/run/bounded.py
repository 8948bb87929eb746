"""Call something that may block forever (stat on a hung NFS mount) with a deadline.

The call runs in a daemon thread; if it has not returned by the deadline we stop waiting
and report it as hung. The thread may stay stuck in the kernel, but the check's child
process exits with os._exit, which does not wait for it.
"""

from __future__ import annotations

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
