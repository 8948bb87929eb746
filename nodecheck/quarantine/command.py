"""The two CLI commands of the quarantine loop: their I/O around loop.py and job.py."""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from nodecheck.log import get_logger
from nodecheck.quarantine import DEFAULT_WHY
from nodecheck.quarantine.job import EXIT_INTERNAL, run_validation_job
from nodecheck.run.config import Config


def parse_share(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 < value <= 1:
        raise ValueError(f"--max-share must be in (0, 100%], not {text!r}")
    return value


def validate_command(args: argparse.Namespace) -> int:
    """Exit 0 when every node passed, 1 when any failed or was skipped, 2 on an error."""
    from nodecheck import hostlist
    from nodecheck.checks.registry import all_checks
    from nodecheck.quarantine.claim import ValidateBusy
    from nodecheck.quarantine.loop import validate_nodes
    from nodecheck.quarantine.select import is_idle, pick_idle, pick_pending
    from nodecheck.run.act import backend_for
    from nodecheck.run.config import load_config
    from nodecheck.run.config_file import ConfigError
    from nodecheck.slurm import SlurmError
    from nodecheck.slurm.jobs import SlurmJobs
    from nodecheck.slurm.scontrol import ScontrolBackend

    env = dict(os.environ)
    if bool(args.nodelist) + args.idle + args.pending != 1:
        print("nodecheck validate: give a NODELIST, or --idle, or --pending", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, env, all_checks())
        slurm_conf = config.slurm_conf or env.get("SLURM_CONF")
        cli = ScontrolBackend(config.scontrol, slurm_conf)
        backend, jobs = backend_for(config, env), SlurmJobs(cli)
        # The node table, read once for the whole start (and handed to the loop).
        table = backend.list_nodes()
        if args.nodelist:
            nodes = hostlist.expand(args.nodelist)  # ValueError when malformed
        elif args.pending:
            nodes = pick_pending(table)
        else:
            idle = [n for n in table if is_idle(n)]
            last = last_validations(config, slurm_conf, idle)
            reserved = jobs.reservation_nodes(config.values["validate_reservation"])
            nodes = pick_idle(table, last, parse_share(args.max_share), reserved)
        if not nodes:
            print("nothing to validate")
            return 0
        why = args.why
        if args.idle and why == DEFAULT_WHY:
            why = "periodic validation of an idle node"
        elif args.pending and why == DEFAULT_WHY:
            why = "drained by nodecheck; validation decides its return"
        with _stops_cleanly():
            runs = validate_nodes(
                config, args.config, backend, jobs, nodes, args.level, why,
                timeout_s=args.timeout, table=table,
            )  # fmt: skip
    except (ConfigError, SlurmError, ValueError, ValidateBusy, OSError) as exc:
        print(f"nodecheck validate: {exc}", file=sys.stderr)
        return 2
    width = max(len(r.node) for r in runs)
    for run in runs:
        job_ids = ",".join(str(j) for j in run.jobs) or "-"
        print(f"{run.node:<{width}}  job {job_ids:<12}  {run.result}")
    passed = sum(r.result.startswith("passed") for r in runs)
    print(f"{len(runs)} node(s): {passed} passed, {len(runs) - passed} not returned")
    return 0 if passed == len(runs) else 1


@contextmanager
def _stops_cleanly() -> Iterator[None]:
    """SIGTERM and SIGHUP (systemd, cron's end, a closed terminal) stop a validate run the
    way Ctrl-C does, so that it leaves the reservation and its jobs as it found them; a
    second signal during that clean-up is ignored (it takes seconds, not minutes)."""

    def stop(signum: int, _frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {
        sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def sacct_args(sacct: str, nodes: list[str], window_days: float, user: str) -> list[str]:
    """slurmdbd's records of validation jobs, bounded to what --idle needs: this job name,
    this user's jobs (validate submits as itself), the candidate nodes, and the window in
    which an older validation no longer changes the order (one counts as never)."""
    from nodecheck.quarantine.loop import JOB_NAME

    args = [sacct, "-X", "-n", "-P", f"--name={JOB_NAME}", f"--user={user}"]
    if nodes:
        args.append(f"--nodelist={','.join(nodes)}")
    days = max(1, math.ceil(window_days))
    return [*args, "-S", f"now-{days}days", "-E", "now", "-o", "NodeList,End"]


def parse_sacct_ends(text: str, nodes: list[str]) -> dict[str, float]:
    """node -> the latest End of its validation jobs (`NodeList|End` lines; a fabric
    stage's job lists several nodes, each of which it validated)."""
    from datetime import datetime

    from nodecheck import hostlist

    wanted, out = set(nodes), {}
    for line in text.splitlines():
        names, _, end = line.partition("|")
        try:
            at = datetime.fromisoformat(end).timestamp()
            held = hostlist.expand(names)
        except ValueError:
            continue  # "Unknown" end (still running), or no node
        for node in held:
            if not wanted or node in wanted:
                out[node] = max(out.get(node, 0.0), at)
    return out


def last_validations(config: Config, slurm_conf: str | None, nodes: list) -> dict[str, float]:
    """When each of `nodes` (the idle candidates) was last validated: from slurmdbd's job
    records where it runs, else from the nodes' own histories where this host can read
    them. A validation older than validate_idle_window_days counts as none."""
    import pwd
    import time
    from pathlib import Path

    from nodecheck.store import history

    sacct = str(Path(config.scontrol).with_name("sacct"))
    env = {
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C",
        **({"SLURM_CONF": slurm_conf} if slurm_conf else {}),
    }
    names = [info.name for info in nodes]
    window = float(config.values["validate_idle_window_days"])
    args = sacct_args(sacct, names, window, pwd.getpwuid(os.geteuid()).pw_name)
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=30, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        proc = None
    if proc is not None and proc.returncode == 0:
        return parse_sacct_ends(proc.stdout, names)
    since = time.time() - window * 86400
    out: dict[str, float] = {}
    for info in nodes:
        at = history.read_only_history(
            config.state_dir_for(info.name),
            lambda h: max(
                h.last_event_at("validate_pass") or 0.0, h.last_event_at("validate_fail") or 0.0
            ),
        )
        if at and at >= since:
            out[info.name] = at
    return out


def validate_job_command(
    config_path: str | None,
    level: str,
    fabric: bool = False,
    judge: str | None = None,
    then_fabric: bool = False,
) -> int:
    """One node's validation job; with `fabric`, its task in the fabric stage's job, which
    judges its node only if it is in `judge` (a hostlist; the others are partners) and
    prints its exit code for the batch step (fabric_job.py)."""
    from nodecheck import hostlist
    from nodecheck.quarantine.fabric_stage import task_line
    from nodecheck.run.pipeline import node_name

    env = dict(os.environ)
    try:
        judged = fabric and node_name(None, env) in hostlist.expand(judge or "")
        outcome = run_validation_job(
            level, config_path, env, fabric=fabric, judge=judged or not fabric,
            final=not then_fabric,
        )  # fmt: skip
        code = outcome.exit_code
        print(f"{outcome.node}: {outcome.decision.summary}; {outcome.action_taken}")
    except Exception as exc:  # the loop reads the exit code; the log says why
        get_logger().exception("validation_job_error", error=f"{type(exc).__name__}: {exc}")
        code = EXIT_INTERNAL
    if fabric:
        print(task_line(node_name(None, env), code), flush=True)
    return code


def validate_fabric_job_command(config_path: str | None, level: str, judge: str) -> int:
    """The fabric stage's batch step (quarantine/fabric_job.py)."""
    from nodecheck import hostlist
    from nodecheck.quarantine.fabric_job import run_fabric_batch

    try:
        return run_fabric_batch(config_path, level, hostlist.expand(judge), dict(os.environ))
    except Exception as exc:  # the loop reads the job's AdminComment; the log says why
        get_logger().exception("validation_job_error", error=f"{type(exc).__name__}: {exc}")
        return EXIT_INTERNAL


def history_command(config_path: str | None, nodelist: str, days: float, as_json: bool) -> int:
    import json
    from dataclasses import asdict

    from nodecheck import hostlist
    from nodecheck.checks.registry import all_checks
    from nodecheck.quarantine.timeline import render, timeline
    from nodecheck.run.config import load_config
    from nodecheck.run.config_file import ConfigError
    from nodecheck.slurm import SlurmError

    env = dict(os.environ)
    try:
        config = load_config(config_path, env, all_checks())
        slurm_conf = config.slurm_conf or env.get("SLURM_CONF")
        nodes = hostlist.expand(nodelist)
    except (ConfigError, SlurmError, ValueError) as exc:
        print(f"nodecheck report: {exc}", file=sys.stderr)
        return 2
    events, missing = timeline(config, slurm_conf, nodes, days)
    if as_json:
        print(json.dumps({"events": [asdict(e) for e in events], "slurmdbd": missing or "ok"}))
        return 0
    print(render(events) or "no events")
    if missing:
        print(f"(no Slurm node events: {missing})")
    return 0
