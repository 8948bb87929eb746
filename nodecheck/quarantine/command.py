"""The two CLI commands of the quarantine loop: their I/O around loop.py and job.py."""

from __future__ import annotations

import os
import sys

from nodecheck.log import get_logger
from nodecheck.quarantine.job import EXIT_INTERNAL, run_validation_job


def validate_command(
    config_path: str | None, nodelist: str, level: str, why: str, timeout_s: float | None
) -> int:
    """Exit 0 when every node passed, 1 when any failed or was skipped, 2 on an error."""
    from nodecheck.checks.registry import all_checks
    from nodecheck.quarantine.loop import expand_nodes, validate_nodes
    from nodecheck.run.config import ConfigError, load_config
    from nodecheck.slurm import SlurmError
    from nodecheck.slurm.act import backend_for
    from nodecheck.slurm.jobs import SlurmJobs
    from nodecheck.slurm.scontrol import ScontrolBackend

    env = dict(os.environ)
    try:
        config = load_config(config_path, env, all_checks())
        cli = ScontrolBackend(config.scontrol, config.slurm_conf or env.get("SLURM_CONF"))
        nodes = expand_nodes(cli._run, config.scontrol, nodelist)
        runs = validate_nodes(
            config,
            config_path,
            backend_for(config, env),
            SlurmJobs(cli),
            nodes,
            level,
            why,
            timeout_s=timeout_s,
        )
    except (ConfigError, SlurmError) as exc:
        print(f"nodecheck validate: {exc}", file=sys.stderr)
        return 2
    width = max(len(r.node) for r in runs)
    for run in runs:
        jobs = ",".join(str(j) for j in run.jobs) or "-"
        print(f"{run.node:<{width}}  job {jobs:<12}  {run.result}")
    passed = sum(r.result.startswith("passed") for r in runs)
    print(f"{len(runs)} node(s): {passed} passed, {len(runs) - passed} not returned")
    return 0 if passed == len(runs) else 1


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
