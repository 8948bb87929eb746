"""`nodecheck report --history`: per node, what happened and when.

Two sources, merged by time: nodecheck's own history (drains, resumes, validations,
reboots; read from the node's state file where this host has it) and, where slurmdbd
runs, Slurm's node events (`sacctmgr show event`: every state change with its reason,
cluster-wide, whoever made it).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nodecheck.run.config import Config
from nodecheck.store import history

WHAT = {
    "drain": "drained",
    "resume": "resumed",
    "flap_hold": "held: flapping",
    "breaker_open": "breaker held back a drain",
    "validate_pass": "validation passed",
    "validate_fail": "validation failed",
    "validate_error": "validation not possible",
    "reboot": "reboot requested",
}


@dataclass(frozen=True)
class Event:
    """One line of a node's timeline."""

    at: float
    node: str
    source: str  # "nodecheck" or "slurmdbd"
    what: str
    detail: str


def nodecheck_events(config: Config, nodes: list[str], since: float) -> list[Event]:
    out = []
    for node in nodes:
        rows = history.read_only_history(config.state_dir_for(node), lambda h: h.lifecycle(since))
        for at, kind, reason in rows or []:
            out.append(Event(at, node, "nodecheck", WHAT.get(kind, kind), reason))
    return out


def sacctmgr_args(sacctmgr: str, nodes: list[str], since: float) -> list[str]:
    start = datetime.fromtimestamp(since).strftime("%Y-%m-%dT%H:%M:%S")
    args = [sacctmgr, "-n", "-P", "show", "event", f"Start={start}"]
    if nodes:
        args.append(f"Nodes={','.join(nodes)}")
    return [*args, "format=NodeName,TimeStart,State,Reason,User"]


def parse_sacctmgr_events(text: str, nodes: list[str]) -> list[Event]:
    """`NodeName|TimeStart|State|Reason|User` lines; cluster-wide rows (no node) dropped."""
    out = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5 or not parts[0] or (nodes and parts[0] not in nodes):
            continue
        node, start, state, reason, user = parts[:5]
        try:
            at = datetime.fromisoformat(start).timestamp()
        except ValueError:
            continue
        detail = f"{reason} (by {user})" if user else reason
        out.append(Event(at, node, "slurmdbd", state.lower() or "state change", detail))
    return out


def slurmdbd_events(
    scontrol: str, slurm_conf: str | None, nodes: list[str], since: float
) -> tuple[list[Event], str | None]:
    """Slurm's node events, or (nothing, why not) where there is no slurmdbd to ask."""
    sacctmgr = str(Path(scontrol).with_name("sacctmgr"))
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    if slurm_conf:
        env["SLURM_CONF"] = slurm_conf
    try:
        proc = subprocess.run(
            sacctmgr_args(sacctmgr, nodes, since),
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"sacctmgr: {exc}"
    if proc.returncode != 0:
        first = (proc.stderr or proc.stdout).strip().splitlines()[:1]
        return [], f"sacctmgr: {first[0] if first else f'exit {proc.returncode}'}"
    return parse_sacctmgr_events(proc.stdout, nodes), None


def timeline(
    config: Config, slurm_conf: str | None, nodes: list[str], days: float
) -> tuple[list[Event], str | None]:
    since = time.time() - days * 86400
    ours = nodecheck_events(config, nodes, since)
    theirs, missing = slurmdbd_events(config.scontrol, slurm_conf, nodes, since)
    return sorted(ours + theirs, key=lambda e: (e.node, e.at)), missing


def render(events: list[Event]) -> str:
    lines = []
    for e in events:
        when = datetime.fromtimestamp(e.at).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{e.node:<10} {when}  {e.source:<9}  {e.what:<24} {e.detail}")
    return "\n".join(lines)
