"""The node's small persistent state: one SQLite file under state_dir, root-only.

Checks keep readings between runs here (fabric counters for prolog->epilog deltas, the
kernel-log cursor for XIDs). Several runs at once on one node (shared nodes) are fine:
WAL mode plus a busy timeout serialise writers. A corrupt file is set aside and recreated.

The state directory may sit on a filesystem that stops answering: every access would then
sleep in the kernel, unkillable, and hold the hook (and slurmd's job start) forever. So a
process looks at it once from a throwaway child with a deadline (`check_responsive`) before
it touches it; a directory that did not answer is refused from then on (StateError), in
this process and in the probe children it forks afterwards.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from nodecheck.core.progress import note

STATE_FILE = "state.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated REAL NOT NULL
);
"""


# Long enough for a local disk under load, short against a prolog's budget.
RESPONSIVE_TIMEOUT_S = 1.0
# How long a run's end waits for its state holder to have opened (Holder.close).
HOLDER_JOIN_S = 0.1
# state dir -> None (answered) or why it is refused, for this process and its later children.
_responsive: dict[Path, str | None] = {}


class StateError(RuntimeError):
    pass


def check_responsive(state_dir: Path, timeout_s: float = RESPONSIVE_TIMEOUT_S) -> str | None:
    """None when a stat of `state_dir` (existing or not) returns within `timeout_s`; else
    why not (without the path). Asked once per process and directory,
    from a detached child (nodecheck.core.isolate)."""
    if state_dir in _responsive:
        return _responsive[state_dir]
    from nodecheck.core import isolate

    try:
        answered = isolate.stat_answers(state_dir, timeout_s)
    except OSError as exc:
        return f"cannot check it: {exc}"
    why = None if answered else f"no answer within {timeout_s:.1f}s (hung filesystem?)"
    if why is None:  # it answers: a stat of it now returns at once
        why = foreign_state(state_dir)
    _responsive[state_dir] = why
    return why


# The files in the state directory whose content decides drains and resumes (the drain
# marker lives in the database; SQLite trusts its WAL and shared-memory files as much).
STATE_FILES = (STATE_FILE, f"{STATE_FILE}-wal", f"{STATE_FILE}-shm")


def foreign_state(state_dir: Path) -> str | None:
    """Why `state_dir` is not root's own, None when it is (or does not exist yet: it will be
    made 0700). Whoever can write the directory or its files can plant a drain marker
    claiming an admin's drain as nodecheck's, and health would resume it: the directory
    and its files must belong to root (or the user nodecheck runs as) and be writable by
    no one else. A symlink as the directory is followed only if root made it."""
    from nodecheck.log import foreign_file

    try:
        link = state_dir.lstat()
        st = state_dir.stat() if stat.S_ISLNK(link.st_mode) else link
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot look at it: {exc.strerror or exc}"
    looked = (("symlink", link), ("directory", st)) if link is not st else (("directory", st),)
    for what, info in looked:
        if info.st_uid not in (0, os.geteuid()):
            return f"state {what} owned by uid {info.st_uid}, not root: refused"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory: refused"
    if st.st_mode & 0o022:
        return f"state directory writable by group/others (mode {st.st_mode & 0o777:o}): refused"
    for name in STATE_FILES:
        try:
            file_st = (state_dir / name).lstat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"cannot look at {name}: {exc.strerror or exc}"
        problem = foreign_file(file_st)
        if problem:
            return f"{name} {problem}: refused"
    return None


def remember_responsive(state_dir: Path, problem: str | None) -> None:
    """What a look made elsewhere found (the hook's first look, nodecheck.run.firstlook):
    None when `state_dir` answered, else why not. Later accesses ask no more."""
    _responsive[state_dir] = problem


def known_responsive() -> dict[Path, str | None]:
    """What this process knows of its state directories' answers (for a probe process that
    is told rather than forked: nodecheck.run.pool)."""
    return dict(_responsive)


def reset_responsive(known: dict[Path, str | None]) -> None:
    """Know exactly `known` (known_responsive of the run), nothing from before."""
    _responsive.clear()
    _responsive.update(known)


def ensure_private_dir(path: Path) -> None:
    """Create `path` 0700 if missing; refuse one that others can write. A directory that
    cannot be made or read (read-only parent, full disk) is a StateError that says so."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as exc:
        raise StateError(f"{path}: state directory unusable: {exc.strerror or exc}") from exc
    if st.st_mode & 0o022:
        raise StateError(f"{path}: state directory is writable by group/others")
    problem = foreign_state(path)
    if problem:
        raise StateError(f"{path}: {problem}")


class StateStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def get_json(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def put_json(self, key: str, value: Any) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO kv(key, value, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                (key, json.dumps(value, sort_keys=True), time.time()),
            )


# The longest a run waits for another run's write lock, when its budget allows that much.
DEFAULT_BUSY_S = 10.0
# The run's deadline (time.monotonic()), set once by the pipeline: every wait for the state
# file ends by then, or LATE_WAIT_S after it. Forked probe children inherit it.
_run_deadline: float | None = None
# A run whose controller calls took its whole budget still records what it did: a write
# that meets no other run's lock takes milliseconds, and this is all it may wait past the
# deadline (well inside the second the hook may run over; run/keeper.py).
LATE_WAIT_S = 0.05


def set_run_deadline(deadline: float | None) -> None:
    """Bound every later wait on the state file by the run's budget."""
    global _run_deadline
    _run_deadline = deadline


def run_deadline() -> float | None:
    return _run_deadline


def busy_wait_s(timeout_s: float | None = None) -> float:
    """How long the next open may wait for the lock: the caller's own limit (a check's
    timeout) or the default, never past the run's deadline (but LATE_WAIT_S)."""
    wait = DEFAULT_BUSY_S if timeout_s is None else timeout_s
    if _run_deadline is not None:
        wait = min(wait, max(_run_deadline - time.monotonic(), LATE_WAIT_S))
    return wait


def _connect(db: Path, wait_s: float) -> sqlite3.Connection:
    fresh = not db.exists()
    old_umask = os.umask(0o077)
    try:
        conn = sqlite3.connect(db, timeout=wait_s, isolation_level=None)
    finally:
        os.umask(old_umask)
    conn.isolation_level = ""  # implicit transactions inside `with conn:`
    conn.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(_SCHEMA)
    if fresh:
        os.chmod(db, 0o600)
    return conn


def set_aside(db: Path, exc: Exception) -> Path:
    """Move a corrupt database (and its WAL/SHM) out of the way, with a log line."""
    aside = db.with_name(f"{db.name}.corrupt-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{db}{suffix}")
        if part.exists():
            part.rename(Path(f"{aside}{suffix}"))
    from nodecheck.log import get_logger

    get_logger().warning("state_corrupt_recreated", path=str(db), aside=str(aside), error=str(exc))
    return aside


# SQLite's own word for a damaged file; the extended codes keep these in their low byte.
_CORRUPTION_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """A damaged file (SQLITE_CORRUPT, SQLITE_NOTADB), as opposed to a busy or unreachable
    one, or a bad row (an IntegrityError is our bug), which must never be thrown away:
    setting the file aside loses drain markers, flap counts and the XID cursor."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _CORRUPTION_CODES


class Holder:
    """A connection to the state file held open, without a transaction, for as long as
    a run uses the state. SQLite checkpoints the WAL into the database, with an fsync and an
    exclusive lock, whenever the last connection to it closes: without a holder, every probe
    that keeps state and the run's own record each did, and the others waited on that lock.
    With one, only the holder's own close does.

    Opened once the probes are started (`open`): a fork must never carry an open SQLite
    connection into a child that uses SQLite itself. Opened by a thread of its own: the
    state's filesystem may stop answering after the run's first look, and the run must then
    go on to name the probe that hung on it, not hang here. Nothing is created: a state
    file that does not exist yet is not held. Best effort: any problem means no holder."""

    def __init__(self, state_dir: Path | None) -> None:
        self.state_dir = state_dir
        self._conn: sqlite3.Connection | None = None
        self._opening: threading.Thread | None = None

    def open(self) -> None:
        if self.state_dir is None or self._opening is not None or _responsive.get(self.state_dir):
            return
        self._opening = threading.Thread(target=self._connect, name="state-holder", daemon=True)
        self._opening.start()

    def _connect(self) -> None:
        assert self.state_dir is not None
        db = self.state_dir / STATE_FILE
        try:
            conn = sqlite3.connect(
                f"file:{db}?mode=rw", uri=True, timeout=0, check_same_thread=False
            )
            conn.execute("SELECT 1 FROM kv LIMIT 1").fetchall()  # joins the WAL's readers
        except sqlite3.Error:
            return
        self._conn = conn

    def close(self) -> None:
        if self._opening is not None:
            self._opening.join(HOLDER_JOIN_S)
            if self._opening.is_alive():
                return  # stuck on a filesystem that stopped answering: left to the kernel
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with suppress(sqlite3.Error):
                conn.close()

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def open_state(state_dir: Path, timeout_s: float | None = None) -> Iterator[StateStore]:
    """Open the node's state; a corrupt file is moved aside and a new one created. Waits
    for another run's lock at most `timeout_s` (default DEFAULT_BUSY_S), and never past
    the run's deadline (set_run_deadline)."""
    wait_s = busy_wait_s(timeout_s)
    note(f"open the state in {state_dir}")  # where a probe that hangs from here got stuck
    unresponsive = check_responsive(state_dir)
    if unresponsive:
        raise StateError(f"state_dir {state_dir}: {unresponsive}")
    ensure_private_dir(state_dir)
    db = state_dir / STATE_FILE
    try:
        conn = _connect(db, wait_s)
        conn.execute("SELECT count(*) FROM kv").fetchone()
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise StateError(f"{db}: {exc}") from exc
        set_aside(db, exc)
        conn = _connect(db, wait_s)
    try:
        yield StateStore(conn)
    finally:
        conn.close()
