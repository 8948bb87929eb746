"""Trend series: timestamped readings of one signal per component, in the node's state file.

The trend checks (nodecheck/checks/trend/) keep one reading per hook run here (a counter's
value, a 0/1 sample, an event with the user it came under) and judge the series, not the run.
Same file, same connection conventions and the same one-transaction read-modify-write as the
other checks that keep readings between runs (store/transaction.py); the table is created on
first use. A manual run reads the series and judges with its own reading added in memory,
but writes nothing (DESIGN.md: a manual run changes no state the hooks rely on).

Retention: each series keeps what its trend can look at (two windows: the current one and
the one it is compared with) and at most MAX_ROWS readings per component; older rows go
when the series is next written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    name TEXT NOT NULL,
    component TEXT NOT NULL,
    at REAL NOT NULL,
    value REAL NOT NULL,
    boot TEXT NOT NULL DEFAULT '',
    tag TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS series_key ON series(name, component, at);
"""
# A health run every 5 minutes for two 7-day windows is ~4000 readings: room for that.
MAX_ROWS = 5000
# Waiting for the state lock ends well inside the check's deadline (transaction.py).
BUSY_MS = 3000


@dataclass(frozen=True)
class Reading:
    """One reading: when (epoch s), the value, the boot it was read in (a counter starts
    again at a reboot or driver reload) and a tag (e.g. the user an Xid came under)."""

    at: float
    value: float
    boot: str = ""
    tag: str = ""


def ensure_schema(conn: sqlite3.Connection) -> None:
    # executescript would commit the caller's open transaction: CREATE only when missing,
    # one statement at a time, inside it.
    if not _has_table(conn):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)


def _has_table(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'series'"
    ).fetchone()
    return row is not None


def read(conn: sqlite3.Connection, name: str, component: str, since: float) -> tuple[Reading, ...]:
    rows = conn.execute(
        "SELECT at, value, boot, tag FROM series WHERE name = ? AND component = ? AND at >= ?"
        " ORDER BY at",
        (name, component, since),
    ).fetchall()
    return tuple(Reading(float(at), float(v), str(b), str(t)) for at, v, b, t in rows)


def components(conn: sqlite3.Connection, name: str) -> list[str]:
    rows = conn.execute("SELECT DISTINCT component FROM series WHERE name = ?", (name,))
    return sorted(str(c) for (c,) in rows)


def append(conn: sqlite3.Connection, name: str, component: str, reading: Reading) -> None:
    conn.execute(
        "INSERT INTO series (name, component, at, value, boot, tag) VALUES (?,?,?,?,?,?)",
        (name, component, reading.at, reading.value, reading.boot, reading.tag),
    )


def prune(conn: sqlite3.Connection, name: str, component: str, now: float, keep_s: float) -> None:
    conn.execute(
        "DELETE FROM series WHERE name = ? AND component = ? AND at < ?",
        (name, component, now - keep_s),
    )
    conn.execute(
        "DELETE FROM series WHERE name = ? AND component = ? AND at < ("
        " SELECT at FROM series WHERE name = ? AND component = ?"
        " ORDER BY at DESC LIMIT 1 OFFSET ?)",
        (name, component, name, component, MAX_ROWS - 1),
    )


def record_and_read(
    state_dir: Path,
    name: str,
    new: Mapping[str, Iterable[Reading]],
    keep_s: float,
    now: float,
    keep_state: bool,
    busy_ms: int = BUSY_MS,
) -> dict[str, tuple[Reading, ...]]:
    """In one transaction: each component's series of the last `keep_s` with its new
    readings at the end; the new readings are stored (and old rows pruned) only when
    `keep_state` (a hook run). Components with no new reading this run are not returned."""
    from nodecheck.store.transaction import locked_update

    out: dict[str, tuple[Reading, ...]] = {}
    with locked_update(state_dir, busy_ms) as store:
        conn = store.conn
        ensure_schema(conn)
        for component, readings in new.items():
            fresh = tuple(readings)
            past = read(conn, name, component, now - keep_s)
            out[component] = past + fresh
            if keep_state:
                for reading in fresh:
                    append(conn, name, component, reading)
                prune(conn, name, component, now, keep_s)
    return out


def read_only(state_dir: Path, name: str, since: float) -> dict[str, tuple[Reading, ...]]:
    """Every component's series of `name` since `since`, for reports (nothing created)."""
    from nodecheck.store.history import read_only_history

    def work(h: object) -> dict[str, tuple[Reading, ...]]:
        conn = h.store.conn  # type: ignore[attr-defined]
        if not _has_table(conn):
            return {}
        return {c: read(conn, name, c, since) for c in components(conn, name)}

    return read_only_history(state_dir, work) or {}
