"""Selftest through the agent, the agent's side: the worker that serves a request (sent by
agent_request.py), and the agent's own daily selftest.

A selftest request is the hooks' request (nodecheck.entry.agent_client: magic, phase,
environment, three descriptors) with the phase `selftest`: the agent forks a worker for it
as for a hook, lends it the probe pool when no run has it, and the worker runs every canary
through `execute` there (the pool members run the probes, as they do for a job start). Its
stdout is a file of the client's, which gets the report as JSON; the exit code comes back
as a hook's does. What the request asks is in its environment: NODECHECK_CONFIG,
NODECHECK_SELFTEST_CHECKS (patterns, one per line), NODECHECK_SELFTEST_TIMEOUT_S and
NODECHECK_SELFTEST_DIR (the client's directory for the canaries' files).

The agent runs a selftest of its own SELFTEST_DELAY_S after it starts and then every
SELFTEST_EVERY_S (`nodecheck agent --selftest-every`, 0: never): it forks a child (niced,
holding none of the agent's socket or pool descriptors) that runs the canaries in-process
and through the agent's socket, logs a `selftest` line, and writes the metrics. The agent
never waits for it: it is reaped like a worker, and ended when the agent stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodecheck.selftest.agent_request import (
    CHECKS_ENV,
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    WORKDIR_ENV,
)

SELFTEST_EVERY_S = 86400.0
# After a start (a boot, an upgrade), the first jobs go first.
SELFTEST_DELAY_S = 60.0
STOP_GRACE_S = 2.0
OVERDUE_S = 60.0  # past the selftest's own time limit, before the agent kills it


def serve_request() -> int:
    """In the agent's worker (this process's environment and stdout are the client's):
    the canaries, probes in the lent pool members, the report as JSON on stdout."""
    from nodecheck.run.config_file import ConfigError
    from nodecheck.run.pipeline import UsageError
    from nodecheck.selftest import local
    from nodecheck.selftest.engine import make_plan

    started = time.monotonic()
    env = dict(os.environ)
    patterns = tuple(p for p in env.pop(CHECKS_ENV, "").split("\n") if p)
    try:
        timeout_s = min(float(env.pop(TIMEOUT_ENV, "")), 3600.0)
    except ValueError:
        timeout_s = DEFAULT_TIMEOUT_S
    workdir = env.pop(WORKDIR_ENV, "")
    try:
        plan = make_plan(None, env, patterns)
        report = local(plan, "agent", started + timeout_s, Path(workdir) if workdir else None)
    except (ConfigError, UsageError, ImportError, OSError) as exc:
        doc: dict[str, Any] = {"error": f"{type(exc).__name__}: {exc}"}
        code = 2
    else:
        doc, code = report.to_json(), report.exit_code
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
    return code


class Timer:
    """In the agent: when its own selftest is due, and the child running it."""

    def __init__(self, socket_path: str, every_s: float, delay_s: float) -> None:
        self.socket_path = socket_path
        self.every_s = every_s
        self.due = time.monotonic() + delay_s if every_s > 0 else None
        self.pid: int | None = None
        self.started = 0.0

    def poll(self, prepare_child: Callable[[], None]) -> int | None:
        """Fork the selftest when it is due and none runs; its pid, or None. One still
        running long past its own time limit is killed (a stuck one is not waited on, and
        never doubled: nodecheck_selftest_last_run_timestamp_seconds goes stale)."""
        now = time.monotonic()
        if self.pid is not None and now - self.started > DEFAULT_TIMEOUT_S + OVERDUE_S:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.due is None or self.pid is not None or now < self.due:
            return None
        self.due, self.started = now + self.every_s, now
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                prepare_child()
                code = _child(self.socket_path)
            finally:
                os._exit(code)
        self.pid = pid
        return pid

    def settle(self, pid: int) -> bool:
        if pid != self.pid:
            return False
        self.pid = None
        return True

    def stop(self) -> None:
        """End a selftest in progress (it removes its files on SIGTERM), then reap it."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _stop_here(signum: int, frame: object) -> None:
    """SIGTERM in the agent's selftest child: unwind (its files go), once."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(0)


def _child(socket_path: str) -> int:
    """The agent's own selftest: in-process (forked from the agent, its own probe
    processes) and through the agent's socket (a worker and the probe pool, like a hook)."""
    from nodecheck.log import get_logger
    from nodecheck.selftest import run_selftest

    signal.signal(signal.SIGTERM, _stop_here)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    with contextlib.suppress(OSError):
        os.nice(10)  # behind the hooks for the CPU
    try:
        report = run_selftest(
            None, dict(os.environ), (), ("inprocess", "agent"), socket_path, record=True
        )
    except Exception as exc:  # said in the journal; the next day tries again
        get_logger().error("selftest", ok=False, error=f"{type(exc).__name__}: {exc}")
        return 1
    failed = sorted({v.check for v in report.checks if not v.ok})
    emit = get_logger().info if report.ok else get_logger().error
    emit(
        "selftest",
        ok=report.ok,
        via=list(report.via),
        counts=report.counts(),
        failed=failed,
        problems=list(report.problems),
        notes=list(report.notes),
        duration_s=round(report.duration_s, 2),
    )
    return report.exit_code
