"""`nodecheck report --lemons`: nodes ranked by what they cost, cluster-wide, from slurmdbd.

Gather (two calls, whatever the cluster's size): `sacctmgr show event` for the drain events
in the window (slurmdbd/dbd.py: DbdReader.drains_since), `sacct` for the jobs that ended
FAILED or NODE_FAIL in it (dbd.read_jobs). No node's state file is read: another host's
is not this host's to read, and a report must not cost one call per node.
Decide (pure, `rank`): per node, nodecheck's drains (an admin's drain is not counted; a
trend's is counted apart), the time spent drained inside the window, the mean time between
failures (time in service over drains), and the jobs that ended FAILED/NODE_FAIL on it
within `job_window_s` before a drain began or while it was draining, with the GPU-hours
they had used there (AllocTRES gres/gpu x elapsed, shared out over the job's nodes).
Render: a table, `--json`, or `--prom` (the same figures as Prometheus text for
node_exporter's textfile collector: nodecheck_lemon_*{node}).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from nodecheck.core.codes import EXIT_INTERNAL, EXIT_OK
from nodecheck.core.reason import is_nodecheck_reason, parse_reason
from nodecheck.hostlist import expand
from nodecheck.slurm.dbd import JobRecord, NodeEvent

# A job that ended badly this long before a drain began is counted as its cost.
JOB_WINDOW_S = 3600.0


@dataclass(frozen=True)
class LostJob:
    job_id: str
    user: str
    state: str
    end: float | None
    gpu_hours: float  # on this node


@dataclass(frozen=True)
class Lemon:
    """One node's record over the window."""

    node: str
    drains: int
    trend_drains: int
    checks: tuple[str, ...]  # the checks its drains named, most frequent first
    failed_jobs: int  # FAILED / NODE_FAIL jobs that ran on it in the window
    jobs_before_drain: tuple[LostJob, ...]
    gpu_hours_lost: float
    drained_s: float
    mtbf_s: float | None  # time in service / drains; None without a drain


def ours(event: NodeEvent) -> bool:
    """A drain nodecheck made: its reason, whole, is one nodecheck writes."""
    return event.drain and is_nodecheck_reason(event.reason)


def rank(
    events: Iterable[NodeEvent],
    jobs: Iterable[JobRecord],
    since: float,
    now: float,
    job_window_s: float = JOB_WINDOW_S,
) -> list[Lemon]:
    """Nodes with a nodecheck drain or a failed job in [since, now], worst first."""
    drains: dict[str, list[NodeEvent]] = {}
    for event in events:
        if ours(event) and (event.end is None or event.end >= since) and event.start <= now:
            drains.setdefault(event.node, []).append(event)
    on_node: dict[str, list[JobRecord]] = {}
    for job in jobs:
        for node in expand(job.nodelist) if job.nodelist else []:
            on_node.setdefault(node, []).append(job)
    span = max(now - since, 1.0)
    rows = []
    for node in sorted(set(drains) | set(on_node)):
        mine = sorted(drains.get(node, []), key=lambda e: e.start)
        drained = sum(max(0.0, min(e.end or now, now) - max(e.start, since)) for e in mine)
        lost = _lost(on_node.get(node, []), mine, now, job_window_s)
        checks: dict[str, int] = {}
        for e in mine:
            parsed = parse_reason(e.reason)
            if parsed is not None:
                checks[parsed.check_id] = checks.get(parsed.check_id, 0) + 1
        started = [e for e in mine if e.start >= since]
        rows.append(
            Lemon(
                node=node,
                drains=len(started),
                trend_drains=sum(
                    1
                    for e in started
                    if (p := parse_reason(e.reason)) and p.check_id.startswith("trend.")
                ),
                checks=tuple(sorted(checks, key=lambda c: (-checks[c], c))),
                failed_jobs=len(on_node.get(node, [])),
                jobs_before_drain=lost,
                gpu_hours_lost=round(sum(j.gpu_hours for j in lost), 3),
                drained_s=round(drained, 1),
                mtbf_s=round((span - drained) / len(started), 1) if started else None,
            )
        )
    rows.sort(
        key=lambda r: (-r.drains, -len(r.jobs_before_drain), -r.failed_jobs, -r.drained_s, r.node)
    )
    return rows


def _lost(
    jobs: list[JobRecord], drains: list[NodeEvent], now: float, window_s: float
) -> tuple[LostJob, ...]:
    """The jobs that ended badly within window_s before a drain began or while it lasted
    (Slurm keeps a DRAINING node's jobs running: they end inside the drain)."""
    out = []
    for job in jobs:
        end = job.end
        if end is None:
            continue
        if any(d.start - window_s <= end <= (d.end or now) for d in drains):
            share = job.gpu_hours_per_node()
            out.append(LostJob(job.job_id, job.user, job.state, end, round(share, 3)))
    return tuple(sorted(out, key=lambda j: j.end or 0))


# --- gather and render --------------------------------------------------------------


def lemons_command(args: argparse.Namespace) -> int:
    import os

    from nodecheck.checks.registry import all_checks
    from nodecheck.run.config import load_config
    from nodecheck.run.config_file import ConfigError
    from nodecheck.slurm import SlurmError
    from nodecheck.slurm.dbd import DbdReader, read_jobs

    days = float(getattr(args, "days", 30) or 30)
    now = time.time()
    since = now - days * 86400
    try:
        config = load_config(args.config, os.environ, all_checks())
        slurm_conf = config.slurm_conf or os.environ.get("SLURM_CONF")
        bindir = Path(config.scontrol).parent
        reader = DbdReader(str(bindir / "sacctmgr"), slurm_conf, timeout_s=30.0)
        events = reader.drains_since(since)
        jobs = read_jobs(str(bindir / "sacct"), slurm_conf, start=since, end=now)
    except (ConfigError, SlurmError) as exc:
        print(f"nodecheck report --lemons: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    rows = rank(events, jobs, since, now)
    if getattr(args, "prom", False):
        sys.stdout.write(render_prom(rows))
    elif args.json:
        doc = {"since": since, "until": now, "days": days, "nodes": [asdict(r) for r in rows]}
        print(json.dumps(doc, indent=1))
    else:
        print(render_table(rows, days))
    return EXIT_OK


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.1f}h"


def render_table(rows: list[Lemon], days: float) -> str:
    if not rows:
        return f"no node drained by nodecheck or with a failed job in {days:g} days"
    head = (
        "NODE",
        "DRAINS",
        "TREND",
        "DRAINED",
        "MTBF",
        "FAILED JOBS",
        "LOST JOBS",
        "GPU-H",
        "CHECKS",
    )
    lines = [head]
    for r in rows:
        lost = ",".join(j.job_id for j in r.jobs_before_drain) or "-"
        lines.append(
            (
                r.node,
                str(r.drains),
                str(r.trend_drains),
                _hours(r.drained_s),
                _hours(r.mtbf_s),
                str(r.failed_jobs),
                lost,
                f"{r.gpu_hours_lost:g}",
                ",".join(r.checks) or "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    return "\n".join(text) + f"\n(last {days:g} days, from slurmdbd)"


def render_prom(rows: list[Lemon]) -> str:
    """The same figures for node_exporter's textfile collector (a site's cron writes them
    on one host): gauges over the report's window."""
    series: list[tuple[str, str, Callable[[Lemon], float | None]]] = [
        ("drains", "nodecheck drains of the node in the window", lambda r: r.drains),
        ("trend_drains", "nodecheck trend drains in the window", lambda r: r.trend_drains),
        ("drained_seconds", "time drained by nodecheck in the window", lambda r: r.drained_s),
        ("failed_jobs", "FAILED/NODE_FAIL jobs on the node", lambda r: r.failed_jobs),
        ("jobs_lost", "jobs ended badly before/while drained", lambda r: len(r.jobs_before_drain)),
        ("gpu_hours_lost", "GPU-hours those jobs used on it", lambda r: r.gpu_hours_lost),
        ("mtbf_seconds", "time in service per drain in the window", lambda r: r.mtbf_s),
    ]
    out = []
    for suffix, help_text, value in series:
        name = f"nodecheck_lemon_{suffix}"
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for r in rows:
            v = value(r)
            if v is not None:
                out.append(f'{name}{{node="{r.node}"}} {float(v)}')
    return "\n".join(out) + "\n"
