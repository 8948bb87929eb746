"""Structured logging: one JSON object per line, to a log file and/or stderr.

Slurm keeps a Prolog's stderr in slurmd's log, so hook phases write there too.
Run-wide fields (node, phase, job) are bound once with `bind_run` and appear on
every event.

structlog is imported on first use, not at import time: it pulls in asyncio and costs
~35 ms, and the runner loads it (`preload`) while the probe children run, so that the
healthy prolog does not pay for it before its probes even start.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import IO, Any

_settings: dict[str, Any] = {"streams": [sys.stderr], "verbose": False, "log_file": None}
_pending: dict[str, Any] = {}  # bind_run fields given before structlog was loaded
_loaded = False


class _TeeLogger:
    """A structlog logger that writes each rendered line to several streams."""

    def __init__(self, streams: list[IO[str]]) -> None:
        self.streams = streams
        self.broken: set[int] = set()

    def msg(self, message: str) -> None:
        for stream in self.streams:
            try:
                stream.write(message + "\n")
                stream.flush()
            except (OSError, ValueError) as exc:
                # A full disk or closed pipe must not turn into a failed check run; say so
                # once on stderr (slurmd's log), which still gets every line.
                if id(stream) not in self.broken and stream is not sys.stderr:
                    self.broken.add(id(stream))
                    note = {"event": "log_file_write_failed", "file": _settings["log_file"]}
                    note["error"] = str(exc)
                    try:
                        sys.stderr.write(json.dumps(note) + "\n")
                        sys.stderr.flush()
                    except (OSError, ValueError):
                        pass

    debug = info = warning = warn = error = critical = exception = fatal = msg


def _open_log_file(path: Path) -> IO[str] | None:
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return os.fdopen(fd, "a", encoding="utf-8")
    except OSError:
        return None


def setup_logging(log_file: str | None, to_stderr: bool, verbose: bool = False) -> str | None:
    """Configure structlog; returns a problem description if the log file is unusable."""
    streams: list[IO[str]] = []
    problem = None
    if log_file:
        handle = _open_log_file(Path(log_file))
        if handle is None:
            problem = f"cannot open log file {log_file}"
            to_stderr = True
        else:
            streams.append(handle)
    if to_stderr:
        streams.append(sys.stderr)
    _settings.update(streams=streams, verbose=verbose, log_file=log_file)
    if _loaded:
        _configure()
    return problem


def _configure() -> None:
    import structlog

    tee = _TeeLogger(_settings["streams"])
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if _settings["verbose"] else logging.INFO
        ),
        logger_factory=lambda *args: tee,
        cache_logger_on_first_use=False,
    )


def preload() -> None:
    """Import and configure structlog now (the runner calls this while probes run)."""
    global _loaded
    if _loaded:
        return
    import structlog

    _configure()
    if _pending:
        structlog.contextvars.bind_contextvars(**_pending)
        _pending.clear()
    _loaded = True


def bind_run(**fields: Any) -> None:
    if not _loaded:
        _pending.update(fields)
        return
    import structlog

    structlog.contextvars.bind_contextvars(**fields)


class _LazyLogger:
    """Stands in for structlog's logger until a line is actually logged."""

    def __getattr__(self, name: str) -> Any:
        preload()
        import structlog

        return getattr(structlog.get_logger("nodecheck"), name)


def get_logger() -> Any:
    if not _loaded:
        return _LazyLogger()
    import structlog

    return structlog.get_logger("nodecheck")
