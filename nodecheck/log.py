"""Structured logging: one JSON object per line, to a log file and/or stderr.

Slurm keeps a Prolog's stderr in slurmd's log, so hook phases write there too.
Run-wide fields (node, phase, job) are bound once with `bind_run` and appear on
every event.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import IO, Any

import structlog


class _TeeLogger:
    """A structlog logger that writes each rendered line to several streams."""

    def __init__(self, streams: list[IO[str]]) -> None:
        self.streams = streams

    def msg(self, message: str) -> None:
        for stream in self.streams:
            try:
                stream.write(message + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # a full disk or closed pipe must not turn into a failed check run

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
    tee = _TeeLogger(streams)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if verbose else logging.INFO
        ),
        logger_factory=lambda *args: tee,
        cache_logger_on_first_use=False,
    )
    return problem


def bind_run(**fields: Any) -> None:
    structlog.contextvars.bind_contextvars(**fields)


def get_logger() -> Any:
    return structlog.get_logger("nodecheck")
