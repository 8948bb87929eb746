"""`nodecheck selftest`: checks that test themselves.

A check that silently passes on the fault it was written for is worse than none: it says
the node is fine. So each enabled check is fed built-in canaries (canaries.py): a
known-bad input, which it must FAIL, and a known-good one, which it must pass, through the
run path the hooks use: in this process, and through the running agent (agent_side.py).
A selftest changes nothing on the node: each input runs with a private state directory,
without acting, logging or recording (engine.py); only its own report, log line and
`nodecheck_selftest_*` metrics are written (report.py, nodecheck.store.metrics).
See docs/selftest.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from nodecheck.selftest.agent_request import DEFAULT_TIMEOUT_S
from nodecheck.selftest.report import Report, merge

if TYPE_CHECKING:
    from nodecheck.selftest.engine import Plan

PATHS = ("inprocess", "agent")


def run_selftest(
    config_path: str | None,
    env: Mapping[str, str],
    patterns: tuple[str, ...],
    via: tuple[str, ...],
    socket_path: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    record: bool = False,
    agent_optional: bool = False,
    muted: bool = True,
) -> Report:
    """Run the plan on each path of `via` ("inprocess", "agent"), each bounded by what is
    left of `timeout_s`. ConfigError and UsageError when there is nothing to run. With
    `record`, the metrics file gets the result; with `agent_optional`, an agent that does
    not answer at all is a note (the hooks run in-process then), not a failure."""
    from nodecheck.selftest import engine

    started, at = time.monotonic(), time.time()
    deadline = started + timeout_s
    plan = engine.make_plan(config_path, env, patterns)
    parts = []
    for path in via:
        if path == "inprocess":
            parts.append(local(plan, "inprocess", deadline, muted=muted))
        else:
            part = _through_agent(plan, env, config_path, patterns, socket_path, deadline)
            if agent_optional and part.via == ():
                part = replace(part, problems=(), notes=part.problems)
            parts.append(part)
    report = replace(merge(parts), node=plan.node, at=at, duration_s=time.monotonic() - started)
    if record:
        report = _record(plan, report)
    return report


def local(
    plan: Plan, label: str, deadline: float, workdir: Path | None = None, muted: bool = True
) -> Report:
    """The plan's canaries in this process (an agent's worker is one such process); their
    runs' log lines only when not `muted` (`nodecheck selftest -v`, on the console)."""
    from nodecheck.selftest import engine

    started, at = time.monotonic(), time.time()
    verdicts = engine.run_plan(plan, label, deadline, workdir, muted)
    return Report(plan.node, at, time.monotonic() - started, (label,), verdicts)


def _through_agent(
    plan: Plan,
    env: Mapping[str, str],
    config_path: str | None,
    patterns: tuple[str, ...],
    socket_path: str | None,
    deadline: float,
) -> Report:
    from nodecheck.entry.agent_client import AgentNotRunning, AgentUnavailable
    from nodecheck.selftest import agent_request

    path = agent_socket(env, socket_path)
    request = dict(env)
    if config_path:  # the worker finds the config as this process did
        request["NODECHECK_CONFIG"] = os.path.abspath(config_path)
    left = max(1.0, deadline - time.monotonic())
    try:
        doc = agent_request.run_via_agent(path, request, patterns, left)
    except AgentNotRunning as exc:  # no path ran: via says so
        return Report(plan.node, time.time(), 0.0, (), problems=(f"agent: {exc}",))
    except AgentUnavailable as exc:
        return Report(plan.node, time.time(), 0.0, ("agent",), problems=(f"agent: {exc}",))
    if "error" in doc:
        return Report(plan.node, time.time(), 0.0, ("agent",), problems=(f"agent: {doc['error']}",))
    return Report.from_json(doc)


def agent_socket(env: Mapping[str, str], explicit: str | None = None) -> str:
    from nodecheck.entry.agent_client import DEFAULT_SOCKET

    return explicit or env.get("NODECHECK_AGENT_SOCKET") or DEFAULT_SOCKET


def agent_running(path: str) -> bool:
    """Whether a socket is there to try (the entrypoints ask the same)."""
    import stat

    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _record(plan: Plan, report: Report) -> Report:
    """The result into the metrics file (its side file, nodecheck.store.metrics); a file
    that cannot be written is a note, never a lost report."""
    from nodecheck.store import metrics

    target = plan.config.metrics_file_for(plan.node)
    if target is None:
        return report
    if not metrics.available():
        return replace(report, notes=(*report.notes, "metrics not written: no prometheus_client"))
    data = metrics.render_selftest(
        plan.node, report.per_check(), report.counts(), report.at, report.duration_s
    )
    try:
        metrics.write_selftest(target, data)
    except OSError as exc:
        return replace(report, notes=(*report.notes, f"metrics not written to {target}: {exc}"))
    return replace(report, notes=(*report.notes, f"metrics written to {target}"))
