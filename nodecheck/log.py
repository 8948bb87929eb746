"""Structured logging: one JSON object per line, to a log file and/or stderr.

Slurm keeps a Prolog's stderr in slurmd's log, so hook phases write there too.
Run-wide fields (node, phase, job) are bound once with `bind_run` and appear on
every event. A line looks like
`{"event": "verdict", "status": "PASS", ..., "node": "n1", "level": "info",
"timestamp": "2026-11-25T23:23:43.901933Z"}`.

This is written with the standard library only, on purpose: it runs at every job start,
and importing structlog (which this module used before) cost more than the whole
interpreter start because its package imports asyncio (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class _Sink:
    """Where lines go: several streams, each failing on its own."""

    def __init__(self) -> None:
        self.streams: list[IO[str]] = [sys.stderr]
        self.log_file: str | None = None
        self.min_level = _LEVELS["info"]
        self.bound: dict[str, Any] = {}
        self.broken: set[int] = set()

    def write(self, line: str) -> None:
        for stream in self.streams:
            try:
                stream.write(line)
                stream.flush()
            except (OSError, ValueError) as exc:
                # A full disk or closed pipe must not turn into a failed check run; say so
                # once on stderr (slurmd's log), which still gets every line.
                if id(stream) not in self.broken and stream is not sys.stderr:
                    self.broken.add(id(stream))
                    note = {"event": "log_file_write_failed", "file": self.log_file}
                    note["error"] = str(exc)
                    try:
                        sys.stderr.write(json.dumps(note) + "\n")
                        sys.stderr.flush()
                    except (OSError, ValueError):
                        pass


_sink = _Sink()


def _timestamp(now: float) -> str:
    """ISO 8601 in UTC with microseconds, e.g. 2026-11-25T23:23:43.901933Z."""
    seconds = int(now)
    micro = int((now - seconds) * 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micro:06d}Z"


def render(event: str, level: str, fields: dict[str, Any], now: float) -> str:
    """One log line: the event's own fields win over the run-wide ones."""
    record: dict[str, Any] = {"event": event, **fields}
    for key, value in _sink.bound.items():
        record.setdefault(key, value)
    record["level"] = level
    record["timestamp"] = _timestamp(now)
    # default=str: a Path or an exception in a field is logged as text, never a crash.
    return json.dumps(record, default=str) + "\n"


class Logger:
    """`log.info("event", key=value, ...)`; `exception` adds the current traceback."""

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if _LEVELS[level] >= _sink.min_level:
            _sink.write(render(event, level, fields, time.time()))

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        import traceback

        self._emit("error", event, {**fields, "exception": traceback.format_exc()})


_logger = Logger()


def _open_log_file(path: str) -> IO[str] | None:
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return os.fdopen(fd, "a", encoding="utf-8")
    except OSError:
        return None


def setup_logging(log_file: str | None, to_stderr: bool, verbose: bool = False) -> str | None:
    """Send lines to log_file and/or stderr; returns a problem if the log file is unusable."""
    streams: list[IO[str]] = []
    problem = None
    if log_file:
        handle = _open_log_file(log_file)
        if handle is None:
            problem = f"cannot open log file {log_file}"
            to_stderr = True
        else:
            streams.append(handle)
    if to_stderr:
        streams.append(sys.stderr)
    _sink.streams = streams
    _sink.log_file = log_file
    _sink.min_level = _LEVELS["debug" if verbose else "info"]
    _sink.broken.clear()
    return problem


def bind_run(**fields: Any) -> None:
    """Fields every later line of this run carries (node, phase, job, node_class)."""
    _sink.bound.update(fields)


def get_logger() -> Logger:
    return _logger
