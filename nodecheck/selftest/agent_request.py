"""A selftest asked of the running agent: the request a client sends (the hooks' request,
nodecheck.entry.agent_client, with the phase `selftest`) and the report it reads back.
The agent's side, the worker that serves it, is agent_side.py."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from nodecheck.entry.agent_client import AgentUnavailable, run_in_agent

SELFTEST_PHASE = "selftest"
CHECKS_ENV = "NODECHECK_SELFTEST_CHECKS"
TIMEOUT_ENV = "NODECHECK_SELFTEST_TIMEOUT_S"
WORKDIR_ENV = "NODECHECK_SELFTEST_DIR"
DEFAULT_TIMEOUT_S = 120.0  # a whole selftest, unless --timeout says otherwise
MAX_REPORT = 16 << 20


def run_via_agent(
    path: str, env: Mapping[str, str], patterns: tuple[str, ...], timeout_s: float
) -> dict[str, Any]:
    """The agent worker's JSON report; AgentUnavailable when no worker ran it. The worker
    makes its canaries' files in a directory of ours, so that they go with it even when the
    worker does not (it is killed the moment we hang up: an interrupted selftest)."""
    workdir = tempfile.mkdtemp(prefix="nodecheck-selftest-agent-")
    try:
        return _request(path, env, patterns, timeout_s, workdir)
    finally:
        _remove(workdir)


def _remove(directory: str) -> None:
    """rmtree, again while a worker that is being killed may still add to it."""
    for _ in range(10):
        shutil.rmtree(directory, ignore_errors=True)
        if not os.path.exists(directory):
            return
        time.sleep(0.1)


def _request(
    path: str, env: Mapping[str, str], patterns: tuple[str, ...], timeout_s: float, workdir: str
) -> dict[str, Any]:
    request_env = {
        **env,
        CHECKS_ENV: "\n".join(patterns),
        TIMEOUT_ENV: f"{timeout_s:.1f}",
        WORKDIR_ENV: workdir,
    }
    environ = {os.fsencode(k): os.fsencode(v) for k, v in request_env.items()}
    with tempfile.TemporaryFile() as out, open(os.devnull, "r+b") as stdin:
        fds = (stdin.fileno(), out.fileno(), _stderr_fd(stdin.fileno()))
        # The worker keeps its own deadline; ten seconds more before we stop waiting.
        code = run_in_agent(path, SELFTEST_PHASE, environ, fds, timeout_s + 10.0)
        out.seek(0)
        text = out.read(MAX_REPORT)
    try:
        return dict(json.loads(text))
    except ValueError:
        raise AgentUnavailable(f"the worker's report is not JSON (exit {code})") from None


def _stderr_fd(fallback: int) -> int:
    """Where the worker's own complaints go: our stderr, if we have a real one."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return fallback
