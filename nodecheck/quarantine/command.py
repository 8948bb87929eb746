"""The two CLI commands of the quarantine loop: their I/O around loop.py and job.py."""

from __future__ import annotations

import argparse
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
    from nodecheck.checks.registry import all_checks
    from nodecheck.quarantine.claim import ValidateBusy
    from nodecheck.quarantine.loop import expand_nodes, validate_nodes
    from nodecheck.quarantine.select import pick_idle, pick_pending
    from nodecheck.run.config import ConfigError, load_config
    from nodecheck.slurm import SlurmError
    from nodecheck.slurm.act import backend_for
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
        if args.nodelist:
            nodes = expand_nodes(cli._run, config.scontrol, args.nodelist)
        elif args.pending:
            nodes = pick_pending(backend.list_nodes())
        else:
            last = last_validations(config, slurm_conf, backend.list_nodes())
            reserved = jobs.reservation_nodes(config.values["validate_reservation"])
            nodes = pick_idle(backend.list_nodes(), last, parse_share(args.max_share), reserved)
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
                config, args.config, backend, jobs, nodes, args.level, why, timeout_s=args.timeout
            )
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


def last_validations(config: Config, slurm_conf: str | None, nodes: list) -> dict[str, float]:
    """When each node was last validated: from slurmdbd's job records where it runs, else
    from the nodes' own histories where this host can read them."""
    from datetime import datetime
    from pathlib import Path

    from nodecheck.quarantine.loop import JOB_NAME
    from nodecheck.store import history

    sacct = str(Path(config.scontrol).with_name("sacct"))
    env = {
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C",
        **({"SLURM_CONF": slurm_conf} if slurm_conf else {}),
    }
    args = [
        sacct,
        "-X",
        "-n",
        "-P",
        f"--name={JOB_NAME}",
        "-S",
        "now-365days",
        "-o",
        "NodeList,End",
    ]
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=30, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        proc = None
    out: dict[str, float] = {}
    if proc is not None and proc.returncode == 0:
        for line in proc.stdout.splitlines():
            node, _, end = line.partition("|")
            try:
                out[node] = max(out.get(node, 0.0), datetime.fromisoformat(end).timestamp())
            except ValueError:
                continue
        return out
    for info in nodes:
        at = history.read_only_history(
            config.state_dir_for(info.name),
            lambda h: max(
                h.last_event_at("validate_pass") or 0.0, h.last_event_at("validate_fail") or 0.0
            ),
        )
        if at:
            out[info.name] = at
    return out


def validate_job_command(config_path: str | None, level: str) -> int:
    try:
        outcome = run_validation_job(level, config_path, dict(os.environ))
    except Exception as exc:  # the loop reads the exit code; the log says why
        get_logger().exception("validation_job_error", error=f"{type(exc).__name__}: {exc}")
        return EXIT_INTERNAL
    print(f"{outcome.node}: {outcome.decision.summary}; {outcome.action_taken}")
    return outcome.exit_code


def history_command(config_path: str | None, nodelist: str, days: float, as_json: bool) -> int:
    import json
    from dataclasses import asdict

    from nodecheck.checks.registry import all_checks
    from nodecheck.quarantine.loop import expand_nodes
    from nodecheck.quarantine.timeline import render, timeline
    from nodecheck.run.config import ConfigError, load_config
    from nodecheck.slurm import SlurmError
    from nodecheck.slurm.scontrol import ScontrolBackend

    env = dict(os.environ)
    try:
        config = load_config(config_path, env, all_checks())
        slurm_conf = config.slurm_conf or env.get("SLURM_CONF")
        cli = ScontrolBackend(config.scontrol, slurm_conf)
        nodes = expand_nodes(cli._run, config.scontrol, nodelist)
    except (ConfigError, SlurmError) as exc:
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
