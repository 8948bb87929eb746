"""Structured logging through structlog: one event per line, to the targets a site picks.

Every layer logs with `get_logger().info("event", key=value, ...)`. Run-wide fields (node,
phase, job, node_class) are bound once per run with `bind_run` (structlog's contextvars)
and a fresh `run_id` is bound by `setup_logging`, so every line of one run can be found
together. A JSON line looks like
`{"node": "n1", "phase": "prolog", "job": 42, "run_id": "5f0c2e9a1b7d", "event": "verdict",
"status": "PASS", ..., "level": "info", "timestamp": "2026-11-25T23:23:43.901933Z"}`.

The events go through the standard library's `logging` (structlog's ProcessorFormatter),
so each target is an ordinary handler (`log_target`, docs/operations.md "Logs"):

- "stderr": JSON lines; what slurmd keeps in its log, but only for a hook that exits
  non-zero. People running `nodecheck run -v` in a terminal get the console renderer.
- "file": JSON lines appended to `log_file` (0640), reopened when logrotate moves it.
- "syslog": the same JSON as the message of a syslog record (ident `nodecheck`, facility
  daemon) on /dev/log.
- "journald": python-systemd's JournalHandler when installed; otherwise the syslog record
  on journald's own syslog socket (/run/systemd/journal/dev-log), else /dev/log.

A result that FAILs is logged at warning at least, and a job id made of digits is logged
as a number.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import logging
import logging.handlers
import os
import stat
import sys
import threading
import types
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any


def _import_structlog() -> types.ModuleType:
    """structlog without rich, which structlog's console renderer imports for its tracebacks
    when installed and which doubles the import (docs/performance.md). A None entry in
    sys.modules is Python's own way to make an import fail; it is there only while structlog
    loads, at the first import of this module, which every entry point does on its main
    thread before it starts a thread or forks; and only while that thread is the process's
    one (no other thread can import rich, or fork, inside the window). rich is the CLI's
    table library; when someone in this process loaded it already, it stays. asyncio, which
    structlog.stdlib imports for async methods nodecheck never calls, is imported for real:
    a stand-in module for it (issue 30) would stay bound in any thread that imported asyncio
    meanwhile."""
    if "rich" in sys.modules or threading.active_count() > 1:
        # Another thread could import rich (or fork) inside the window: no trick then.
        return importlib.import_module("structlog")
    sys.modules["rich"] = None  # type: ignore[assignment]  # plain tracebacks on the console
    try:
        return importlib.import_module("structlog")
    finally:
        if "rich" in sys.modules and sys.modules["rich"] is None:
            del sys.modules["rich"]


structlog = _import_structlog()

LOGGER_NAME = "nodecheck"
TARGETS = ("stderr", "file", "syslog", "journald")
DEFAULT_TARGETS = ("stderr", "file")
SYSLOG_SOCKET = "/dev/log"
JOURNALD_SYSLOG_SOCKET = "/run/systemd/journal/dev-log"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_JOB_FIELDS = ("job", "job_id")


def _job_ids_as_numbers(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Slurm's job ids are numbers; log them as numbers (array and het-job ids like
    `12_3` or `12+1` stay text)."""
    for key in _JOB_FIELDS:
        value = event_dict.get(key)
        if isinstance(value, str) and value.isdigit():
            event_dict[key] = int(value)
    return event_dict


# Applied to every event before it reaches a handler; the renderers come per handler.
_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    _job_ids_as_numbers,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


class _RenderedOnce(structlog.stdlib.ProcessorFormatter):
    """The JSON line of an event is the same for every target: render it for the first
    handler and hand that text to the others (a hook logs to stderr and its file at least)."""

    def format(self, record: logging.LogRecord) -> str:
        key = f"_nodecheck_line_{id(self)}"
        line = record.__dict__.get(key)
        if line is None:
            line = super().format(record)
            record.__dict__[key] = line
        return line


def _json_formatter() -> logging.Formatter:
    return _RenderedOnce(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            # default=str: a Path or an exception in a field is logged as text, never a crash.
            structlog.processors.JSONRenderer(default=str),
        ],
        foreign_pre_chain=_SHARED,
    )


def _console_formatter() -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        foreign_pre_chain=_SHARED,
    )


class _Stderr(logging.StreamHandler):
    """Whatever sys.stderr is at the time of the line: the agent's worker points fd 2 at
    slurmd's pipe after start-up, tests swap sys.stderr."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _say_on_stderr(event: str, **fields: Any) -> None:
    """A note about logging itself, straight to stderr (slurmd's log)."""
    line = {"event": event, **fields, "level": "warning"}
    try:
        sys.stderr.write(json.dumps(line, default=str) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class _OnceBroken:
    """A handler that goes quiet after its first failure (a full disk, a gone socket) and
    says so once on stderr, instead of failing the run or printing a traceback per line."""

    broken = False
    describe: dict[str, Any]

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.broken:
            self.broken = True
            error = sys.exc_info()[1]
            _say_on_stderr(self.describe["event"], **self.describe["fields"], error=str(error))

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)  # type: ignore[misc]


class _LogFile(_OnceBroken, logging.handlers.WatchedFileHandler):
    """`log_file`, root-only readable (0640), its directory created 0750 (as the Debian
    package makes /var/log/nodecheck); reopened when logrotate renames it (no copytruncate
    needed)."""

    def __init__(self, path: str) -> None:
        self.describe = {"event": "log_file_write_failed", "fields": {"file": path}}
        os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
        super().__init__(path, encoding="utf-8")

    def _open(self) -> Any:
        return os.fdopen(open_private_append(self.baseFilename), "a", encoding="utf-8")


def open_private_append(path: str) -> int:
    """Open (or create, 0640) a file root appends to, refusing what someone else put in its
    place: whoever can write its directory (a log directory made 0755 by hand, then opened
    up) could plant a symlink to /etc/passwd or a hard link to /etc/shadow there, and every
    line would go into it. O_NOFOLLOW refuses a symlink as the last component; fstat then
    refuses anything but a regular file of our own with one link. O_NONBLOCK: a FIFO
    planted there must not hold the run (refused a moment later)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o640)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            why = f"{path} is a symbolic link: refused (never followed)"
            raise OSError(exc.errno, why) from exc
        raise
    try:
        st = os.fstat(fd)
        problem = foreign_file(st, private=False)
        if problem:
            raise OSError(errno.EPERM, f"{path}: refused: {problem}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def foreign_file(st: os.stat_result, private: bool = True) -> str | None:
    """Why a file root writes to (or trusts) is not its own: not a regular file, owned by
    another user, with a second hard link elsewhere, or (`private`: a file whose content
    root trusts, as the state) writable by group or others."""
    # A device (/dev/null, /dev/full) only root can make: a site's choice, never a plant.
    device = not private and stat.S_ISCHR(st.st_mode) and st.st_uid == 0
    if not (stat.S_ISREG(st.st_mode) or device):
        return "not a regular file"
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}, not root"
    if private and st.st_mode & 0o022:
        return f"writable by group or others (mode {st.st_mode & 0o777:o})"
    if st.st_nlink > 1 and not device:
        return f"{st.st_nlink} hard links to it"
    return None


class _Syslog(_OnceBroken, logging.handlers.SysLogHandler):
    """One syslog record per event: ident `nodecheck`, facility daemon, priority from
    the event's level; the message is the JSON line."""

    def __init__(self, address: str) -> None:
        self.describe = {"event": "syslog_write_failed", "fields": {"socket": address}}
        # logging connects lazily and would drop every line in silence; say it now.
        if not stat.S_ISSOCK(os.stat(address).st_mode):
            raise OSError(f"{address} is not a socket")
        super().__init__(address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        self.ident = "nodecheck: "


def _journald_handler(socket_path: str | None) -> logging.Handler:
    try:
        from systemd.journal import JournalHandler  # python-systemd, when installed
    except ImportError:
        if socket_path is None:
            journal = Path(JOURNALD_SYSLOG_SOCKET)
            socket_path = str(journal) if journal.exists() else SYSLOG_SOCKET
        return _Syslog(socket_path)
    return JournalHandler(SYSLOG_IDENTIFIER="nodecheck")


def _handler(target: str, log_file: str | None, syslog_socket: str | None) -> logging.Handler:
    """One target's handler; OSError when it cannot be opened."""
    if target == "stderr":
        return _Stderr()
    if target == "file":
        if not log_file:
            raise OSError("log_target names 'file' but log_file is empty")
        return _LogFile(log_file)
    if target == "syslog":
        return _Syslog(syslog_socket or SYSLOG_SOCKET)
    if target == "journald":
        return _journald_handler(syslog_socket)
    raise ValueError(f"unknown log target {target!r}; expected one of {', '.join(TARGETS)}")


def _new_run_id() -> str:
    return os.urandom(6).hex()


def setup_logging(
    log_file: str | None,
    to_stderr: bool,
    verbose: bool = False,
    *,
    targets: Iterable[str] | None = None,
    console: bool = False,
    syslog_socket: str | None = None,
) -> str | None:
    """Send events to `targets` (default: "file" when log_file is set, "stderr" when
    to_stderr) and start a new run (fresh run_id, no bound fields). `console` renders
    stderr for people. Returns a problem when a target could not be opened; stderr then
    takes its place, so no line is lost."""
    if targets is None:
        targets = [*(["file"] if log_file else []), *(["stderr"] if to_stderr else [])]
    # An empty log_file turns the file off, as it always has.
    targets = [t for t in targets if t != "file" or log_file]
    handlers: list[logging.Handler] = []
    problems = []
    json_lines = _json_formatter()  # one for every JSON target: each line rendered once
    for target in dict.fromkeys(targets):
        try:
            handler = _handler(target, log_file, syslog_socket)
        except OSError as exc:
            where = log_file if target == "file" else syslog_socket or target
            problems.append(f"cannot open log target {target} ({where}): {exc}")
            continue
        stderr_for_people = console and isinstance(handler, _Stderr)
        handler.setFormatter(_console_formatter() if stderr_for_people else json_lines)
        handlers.append(handler)
    if problems and not any(isinstance(h, _Stderr) for h in handlers):
        fallback = _Stderr()
        fallback.setFormatter(json_lines)
        handlers.append(fallback)
    if not handlers:  # nowhere to log (a quiet manual run): not logging's last-resort printer
        handlers.append(logging.NullHandler())
    _install(handlers, logging.DEBUG if verbose else logging.INFO)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(run_id=_new_run_id())
    return "; ".join(problems) or None


def _install(handlers: list[logging.Handler], level: int) -> None:
    stdlib_logger = logging.getLogger(LOGGER_NAME)
    for old in list(stdlib_logger.handlers):
        stdlib_logger.removeHandler(old)
        with contextlib.suppress(OSError):  # a full disk already reported its problem
            old.close()
    for handler in handlers:
        stdlib_logger.addHandler(handler)
    stdlib_logger.setLevel(level)
    stdlib_logger.propagate = False  # our lines go to our targets only, never twice
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )


def bind_run(**fields: Any) -> None:
    """Fields every later line of this run carries (node, phase, job, node_class)."""
    structlog.contextvars.bind_contextvars(**fields)


def bound_fields() -> Mapping[str, Any]:
    """What is bound now (run_id and the run's fields)."""
    return structlog.contextvars.get_contextvars()


class Logger:
    """`log.info("event", key=value, ...)`; `exception` adds the current traceback.

    A thin layer over structlog's bound logger for one rule: an event that carries a FAIL
    status is a warning at least, whatever level the caller chose, so a site that only
    keeps warnings (syslog filters, journald priorities) keeps every failed check."""

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if fields.get("status") == "FAIL" and _LEVELS.get(level, logging.ERROR) < logging.WARNING:
            level = "warning"
        getattr(structlog.get_logger(LOGGER_NAME), level)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._emit("exception", event, fields)


_logger = Logger()
# Until a run sets its targets: JSON lines on stderr, never structlog's default printer
# on stdout (which a `--json` run's reader would parse).
setup_logging(None, to_stderr=True)


def get_logger() -> Logger:
    return _logger
