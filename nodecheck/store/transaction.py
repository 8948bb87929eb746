"""A read-modify-write of the node's state in one transaction, with a bounded lock wait.

Checks that keep a baseline between runs (ib.counters, gpu.nvlink) read the last reading,
judge, and store the new one. On a shared node two hook runs may do that at once: without
a transaction both compare against the same old reading and one of the new ones is lost.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Waiting for the state lock must end well inside a check's deadline: a state file held
# by someone else is nodecheck's problem (ERROR), never a "probe hung" FAIL.
DEFAULT_BUSY_MS = 3000
OPEN_ATTEMPTS = 5


@contextlib.contextmanager
def open_retrying(state_dir: Path, busy_ms: int = DEFAULT_BUSY_MS) -> Iterator[Any]:
    """open_state, retried briefly: several probe processes creating a fresh state file at
    once can get SQLITE_BUSY at once (switching to WAL does not wait for the busy handler).
    Each attempt waits for the lock at most busy_ms, and never past the run's deadline."""
    from nodecheck.store.state import StateError, open_state

    with contextlib.ExitStack() as stack:
        for attempt in range(OPEN_ATTEMPTS):
            try:
                store = stack.enter_context(open_state(state_dir, busy_ms / 1000))
                break
            except StateError as exc:
                if "locked" not in str(exc) or attempt == OPEN_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        yield store


@contextlib.contextmanager
def immediate(store: Any, busy_ms: int = DEFAULT_BUSY_MS) -> Iterator[None]:
    """Serialise read-modify-write of one key between concurrent runs (BEGIN IMMEDIATE);
    rolled back when the body raises."""
    conn = getattr(store, "conn", None)
    if conn is None:
        yield
        return
    from nodecheck.store.state import busy_wait_s

    wait_ms = int(busy_wait_s(busy_ms / 1000) * 1000)  # within the run's deadline too
    conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    if conn.in_transaction:
        conn.commit()


@contextlib.contextmanager
def locked_update(state_dir: Path, busy_ms: int = DEFAULT_BUSY_MS) -> Iterator[Any]:
    """The state store, inside one write transaction for the body."""
    with open_retrying(state_dir, busy_ms) as store, immediate(store, busy_ms):
        yield store
