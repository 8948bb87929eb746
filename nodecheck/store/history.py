"""Per-node run history, kept in the node's state file (nodecheck/store/state.py, new tables).

Every hook run (prolog, epilog, health) leaves one row: time, phase, job, verdict status,
action, duration, and one `findings` row per non-passing result (check id + component).
Drains and resumes are `lifecycle` rows. Bounded: the last `history_max_rows` runs, none
older than `history_max_days`. What it is for:

- hysteresis: a WARN of the same check on the same component repeated K times within a
  window becomes a FAIL (`[hysteresis."<check>"]` in the config);
- flap control: a node drained more than `flap_max_drains` times within `flap_window_s`
  stays drained with a "flapping" reason until an admin resumes it;
- resume after N consecutive passes in the health phase since nodecheck drained the node;
- counters and last-run values for the metrics file (nodecheck/store/metrics.py, rewritten
  with each run's row by nodecheck/store/recording.py).

Each run writes in one short IMMEDIATE transaction; WAL plus the busy timeout serialise
concurrent prologs on a shared node. A damaged file is set aside and recreated, like
`open_state` does, also when the damage shows only once history reads it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from nodecheck.core.clock import Stamp
from nodecheck.core.plan import HeldBack, HistoryWindow, Marker, PendingFailure
from nodecheck.core.reason import human_window
from nodecheck.core.results import CheckResult, Status
from nodecheck.store.state import (
    STATE_FILE,
    StateError,
    StateStore,
    foreign_state,
    is_corruption,
    open_state,
    set_aside,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    phase TEXT NOT NULL,
    job TEXT,
    status TEXT NOT NULL,
    action TEXT NOT NULL,
    duration_s REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_at ON runs(at);
CREATE TABLE IF NOT EXISTS findings (
    run_id INTEGER NOT NULL,
    at REAL NOT NULL,
    check_id TEXT NOT NULL,
    component TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_key ON findings(check_id, component, at);
CREATE INDEX IF NOT EXISTS findings_run ON findings(run_id);
CREATE TABLE IF NOT EXISTS lifecycle (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    boot_id TEXT,
    since_boot REAL
);
CREATE INDEX IF NOT EXISTS lifecycle_kind_at ON lifecycle(kind, at);
"""
_TABLES = ("runs", "findings", "lifecycle")
COUNTERS = "counters"  # kv: {"drains": n, "resumes": n, "flap_holds": n}, never pruned
LAST = "last"  # kv: last status/duration per check and last run per phase, for metrics
PASSING = ("PASS", "WARN")
# Event kind -> its counter in COUNTERS (and metric nodecheck_<counter>_total).
EVENT_COUNTERS = {
    "drain": "drains",
    "resume": "resumes",
    "flap_hold": "flap_holds",
    "breaker_open": "breaker_trips",
    "validate_pass": "validations_passed",
    "validate_fail": "validations_failed",
    # a validation nodecheck could not carry out (e.g. no PyTorch): no drain, said loudly
    "validate_error": "validations_not_possible",
    "reboot": "reboots",
}
DRAIN_MARKER = "drain"  # kv: set while nodecheck holds a drain of this node (plan.Marker)
BREAKER_HOLD = "breaker_hold"  # kv: the breaker held this failing node back (plan.HeldBack)
PENDING_FAILURE = "pending_failure"  # kv: a failure Slurm will drain for (plan.PendingFailure)
UNSAVED_APPLIED = "unsaved_applied"  # kv: id of the last unsaved file applied (store/unsaved.py)


@dataclass(frozen=True)
class Retention:
    """How much history to keep (history_max_rows, history_max_days)."""

    max_rows: int = 10000
    max_age_s: float = 30 * 86400
    # Lifecycle rows must outlive the flap window even if runs are kept for less.
    lifecycle_age_s: float = 30 * 86400


@dataclass(frozen=True)
class RunRecord:
    """One hook run as the history keeps it."""

    at: float
    phase: str
    job: str | None
    status: str
    action: str
    duration_s: float
    results: tuple[CheckResult, ...]


class History:
    """The history tables of one open state file."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.conn = store.conn

    @contextmanager
    def write(self) -> Iterator[History]:
        """One IMMEDIATE transaction: taken up front, so concurrent writers queue on the
        busy timeout instead of failing to upgrade a read lock."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    # -- writing ------------------------------------------------------------------------

    def put(self, key: str, value: Any) -> None:
        """StateStore.put_json commits; inside `write()` the transaction is ours."""
        self.conn.execute(
            "INSERT INTO kv(key, value, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
            (key, json.dumps(value, sort_keys=True), time.time()),
        )

    def add_run(self, rec: RunRecord, retention: Retention) -> None:
        cur = self.conn.execute(
            "INSERT INTO runs(at, phase, job, status, action, duration_s) VALUES (?,?,?,?,?,?)",
            (rec.at, rec.phase, rec.job, rec.status, rec.action, round(rec.duration_s, 4)),
        )
        run_id = cur.lastrowid
        findings = [
            (run_id, rec.at, r.check_id, r.component, r.status.name)
            for r in rec.results
            if r.status not in (Status.PASS, Status.SKIP)
        ]
        if findings:
            self.conn.executemany(
                "INSERT INTO findings(run_id, at, check_id, component, status) VALUES (?,?,?,?,?)",
                findings,
            )
        self._update_last(rec)
        self._prune(rec.at, run_id or 0, retention)

    def _update_last(self, rec: RunRecord) -> None:
        last = self.store.get_json(LAST) or {}
        checks = last.setdefault("checks", {})
        per_check: dict[str, dict[str, Any]] = {}
        for r in rec.results:
            entry = per_check.setdefault(
                r.check_id, {"status": r.status.name, "duration_s": 0.0, "at": rec.at}
            )
            if r.status > Status[entry["status"]]:
                entry["status"] = r.status.name
            entry["duration_s"] = max(entry["duration_s"], round(r.duration_s, 4))
            entry["phase"] = rec.phase
            if r.values.get("report_only"):  # a FAIL held back as WARN (run/report_only.py)
                entry["report_only"] = entry.get("report_only", 0) + 1
        checks.update(per_check)
        last.setdefault("runs", {})[rec.phase] = {
            "at": rec.at,
            "duration_s": round(rec.duration_s, 4),
            "status": rec.status,
        }
        self.put(LAST, last)

    def _prune(self, now: float, last_id: int, retention: Retention) -> None:
        self.conn.execute(
            "DELETE FROM runs WHERE id <= ? OR at < ?",
            (last_id - retention.max_rows, now - retention.max_age_s),
        )
        self.conn.execute("DELETE FROM findings WHERE run_id < (SELECT min(id) FROM runs)")
        self.conn.execute(
            "DELETE FROM lifecycle WHERE at < ?",
            (now - max(retention.max_age_s, retention.lifecycle_age_s),),
        )

    def add_event(self, kind: str, reason: str, at: float, stamp: Stamp | None = None) -> None:
        """kind: drain (a new drain episode), resume, flap_hold. `stamp`: where `at` lies on
        the node's boot clock, so that windows over events survive clock steps."""
        boot, since = (stamp.boot_id or None, stamp.since_boot) if stamp else (None, None)
        if since is not None and since < 0:
            boot, since = None, None
        self.conn.execute(
            "INSERT INTO lifecycle(at, kind, reason, boot_id, since_boot) VALUES (?,?,?,?,?)",
            (at, kind, reason, boot, since),
        )
        counters = self.store.get_json(COUNTERS) or {}
        key = EVENT_COUNTERS[kind]
        counters[key] = int(counters.get(key, 0)) + 1
        self.put(COUNTERS, counters)

    # -- reading ------------------------------------------------------------------------

    def events_since(self, kind: str, since: float) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM lifecycle WHERE kind = ? AND at >= ?", (kind, since)
        ).fetchone()
        return int(row[0])

    def events_within(self, kind: str, window_s: float, now: Stamp) -> int:
        """Events of `kind` no older than `window_s` before `now`, by the clock that can say
        (core/clock.py): this boot's events by the boot clock, whatever the wall clock did;
        earlier boots' by the wall clock, and only while this boot is younger than the
        window (they are at least that old)."""
        if not now.boot_id or now.since_boot < 0:
            return self.events_since(kind, now.wall - window_s)
        row = self.conn.execute(
            "SELECT count(*) FROM lifecycle WHERE kind = ? AND ("
            " (boot_id = ? AND since_boot >= ?)"
            " OR ((boot_id IS NULL OR boot_id != ?) AND at >= ? AND ? <= ?))",
            (
                kind,
                now.boot_id,
                now.since_boot - window_s,
                now.boot_id,
                now.wall - window_s,
                now.since_boot,
                window_s,
            ),
        ).fetchone()
        return int(row[0])

    def lifecycle(self, since: float) -> list[tuple[float, str, str]]:
        """(at, kind, reason) of every lifecycle event since `since`, oldest first."""
        rows = self.conn.execute(
            "SELECT at, kind, reason FROM lifecycle WHERE at >= ? ORDER BY at, rowid", (since,)
        ).fetchall()
        return [(float(at), str(kind), str(reason or "")) for at, kind, reason in rows]

    def last_event_at(self, kind: str) -> float | None:
        row = self.conn.execute("SELECT max(at) FROM lifecycle WHERE kind = ?", (kind,)).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def warn_count(self, check_id: str, component: str, since: float) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM findings WHERE check_id = ? AND component = ? AND at >= ? "
            "AND status = 'WARN'",
            (check_id, component, since),
        ).fetchone()
        return int(row[0])

    def health_passes_since(self, since: float) -> int:
        """Health-phase passes (PASS or WARN) since `since`, counted back from the latest
        run and stopping at the first FAIL in any phase. Other runs (internal errors,
        prolog/epilog passes) neither count nor break the streak."""
        return _streak(
            self.conn.execute(
                "SELECT phase, status FROM runs WHERE at >= ? ORDER BY id DESC", (since,)
            )
        )

    def health_passes_after(self, run_id: int) -> int:
        """As health_passes_since, over the rows written after row `run_id`: the order the
        rows were written in, which no step of the node's clock changes."""
        return _streak(
            self.conn.execute(
                "SELECT phase, status FROM runs WHERE id > ? ORDER BY id DESC", (run_id,)
            )
        )

    def last_run_id(self) -> int:
        """The id of the latest history row (0: none yet). Ids only grow (AUTOINCREMENT)."""
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'runs'").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT id, at, phase, job, status, action, duration_s FROM runs "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        out = []
        for run_id, at, phase, job, status, action, duration in rows:
            findings = self.conn.execute(
                "SELECT check_id, component, status FROM findings WHERE run_id = ?", (run_id,)
            ).fetchall()
            out.append(
                {
                    "at": at,
                    "phase": phase,
                    "job": job,
                    "status": status,
                    "action": action,
                    "duration_s": duration,
                    "findings": [
                        {"check": c, "component": comp, "status": s} for c, comp, s in findings
                    ],
                }
            )
        return out

    def counters(self) -> dict[str, int]:
        stored = self.store.get_json(COUNTERS) or {}
        return {k: int(stored.get(k, 0)) for k in EVENT_COUNTERS.values()}

    def last(self) -> dict[str, Any]:
        return self.store.get_json(LAST) or {}


def window(h: History, now: Stamp | float, flap_window_s: float) -> HistoryWindow:
    """What decide needs from the history, read in one go (nodecheck/run/gather.py)."""
    stamp = now if isinstance(now, Stamp) else Stamp(now)
    marker = Marker.from_json(h.store.get_json(DRAIN_MARKER))
    return HistoryWindow(
        marker=marker,
        held_back=HeldBack.from_json(h.store.get_json(BREAKER_HOLD)),
        pending=PendingFailure.from_json(h.store.get_json(PENDING_FAILURE)),
        drains_in_window=h.events_within("drain", flap_window_s, stamp),
        passes_since_drain=_passes_since(h, marker),
        validated=h.last_event_at("validate_pass") is not None,
    )


def _passes_since(h: History, marker: Marker | None) -> int:
    """The health passes towards resuming the marker's drain: the rows written after it.
    A marker from before row ids were kept counts by time, as it always did."""
    if marker is None:
        return 0
    if marker.after_run is not None:
        return h.health_passes_after(marker.after_run)
    return h.health_passes_since(marker.at)


def _streak(rows: Iterable[tuple[str, str]]) -> int:
    """Health passes, newest first, up to the first FAIL of any phase."""
    passes = 0
    for phase, status in rows:
        if status == "FAIL":
            break
        if phase == "health" and status in PASSING:
            passes += 1
    return passes


def _ensure_schema(conn: sqlite3.Connection) -> None:
    have = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (?,?,?)", _TABLES
        )
    }
    if have != set(_TABLES):
        conn.executescript(SCHEMA)
    for table in _TABLES:
        conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()  # noqa: S608 (fixed names)
    # A file from before events carried their boot clock: add the columns (NULL: unknown).
    columns = {row[1] for row in conn.execute("PRAGMA table_info(lifecycle)")}
    for column, kind in (("boot_id", "TEXT"), ("since_boot", "REAL")):
        if column not in columns:
            conn.execute(f"ALTER TABLE lifecycle ADD COLUMN {column} {kind}")


def with_history(state_dir: Path, work: Callable[[History], T]) -> T:
    """Open the state file's history and run `work` on it. A damaged file (even one whose
    damage shows only now) is set aside and recreated once, as open_state does."""
    for attempt in (1, 2):
        try:
            with open_state(state_dir) as store:
                _ensure_schema(store.conn)
                return work(History(store))
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise StateError(f"{state_dir / STATE_FILE}: {exc}") from exc
            if attempt == 2:
                raise StateError(f"{state_dir / STATE_FILE}: still damaged: {exc}") from exc
            set_aside(state_dir / STATE_FILE, exc)
    raise AssertionError("unreachable")


def read_only_history(state_dir: Path, work: Callable[[History], T]) -> T | None:
    """For `nodecheck report`: read a node's history if this host has it; never create or
    repair anything. None when there is none (or it cannot be read)."""
    db = state_dir / STATE_FILE
    if not db.is_file() or foreign_state(state_dir):  # someone else's word is not read
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return None
    try:
        return work(History(StateStore(conn)))
    except sqlite3.Error:
        return None
    finally:
        conn.close()


# -- policies built on the history --------------------------------------------------------


def escalate(
    results: Iterable[CheckResult], history: History, rules: Mapping[str, Any], now: float
) -> list[CheckResult]:
    """Hysteresis: a WARN whose check has a rule becomes a FAIL when it is the K-th WARN of
    that check on that component within the rule's window (this run counts as one)."""
    out = []
    for r in results:
        rule = rules.get(r.check_id)
        if r.status is Status.WARN and rule is not None:
            seen = history.warn_count(r.check_id, r.component, now - rule.window_s) + 1
            if seen >= rule.warn_count:
                r = replace(
                    r,
                    status=Status.FAIL,
                    message=f"warned {seen}x in {human_window(rule.window_s)}: {r.message}",
                    values={**r.values, "escalated_from": "WARN", "warn_count": seen},
                )
        out.append(r)
    return out


def drain_reason(h: History) -> str | None:
    """The reason of the drain nodecheck holds now, None when it holds none."""
    marker = h.store.get_json(DRAIN_MARKER)
    if not marker:
        return None
    return str(marker.get("reason", "")) if isinstance(marker, dict) else ""


def retention_for(values: Mapping[str, Any]) -> Retention:
    return Retention(
        max_rows=int(values.get("history_max_rows", 10000)),
        max_age_s=float(values.get("history_max_days", 30)) * 86400,
        lifecycle_age_s=float(values.get("flap_window_s", 86400)),
    )


def now() -> float:
    return time.time()
