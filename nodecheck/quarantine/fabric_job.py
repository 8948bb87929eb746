"""`nodecheck validate-job --fabric-batch`: the batch step of the fabric stage's multi-node job.

It runs on the job's first node and starts, with srun, one `nodecheck validate-job
--fabric` task on every node of the job at once (deep.fabric needs them all in the same
moment). Each task judges and acts on its own node (or, on a partner, only measures) and
prints its exit code on a line of its own (fabric_stage.task_line); this step collects
those lines from srun's output and writes every judged node's code into the job's
AdminComment, which the loop reads from `squeue --json` (only root sets an AdminComment).

The run's secret reaches the tasks in the environment that sbatch took from validate
(`NODECHECK_FABRIC_SECRET`) and srun passes on: never on a command line.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from nodecheck import hostlist
from nodecheck.log import get_logger, setup_logging
from nodecheck.quarantine.fabric_stage import format_verdicts, parse_task_lines
from nodecheck.quarantine.job import EXIT_INTERNAL, EXIT_PASSED
from nodecheck.run.config import Config, load_config


def task_args(config: Config, config_path: str | None, level: str, judged: list[str]) -> list[str]:
    """The command srun starts on every node of the job: an argument list, no shell."""
    from nodecheck.quarantine.loop import validation_script

    head = ["--config", config_path] if config_path else []
    judge = ",".join(judged)
    return [validation_script(config), *head, "validate-job", "--level", level, "--fabric",
            "--judge", judge]  # fmt: skip


def srun_args(config: Config, nodes: list[str], task: list[str]) -> list[str]:
    """One task per node; a task that exits non-zero (its node failed) must not kill the
    others' measurement (--kill-on-bad-exit=0)."""
    srun = str(Path(config.scontrol).with_name("srun"))
    count = len(nodes)
    return [srun, f"--nodes={count}", f"--ntasks={count}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=0", *task]  # fmt: skip


def run_fabric_batch(
    config_path: str | None, level: str, judged: list[str], env: Mapping[str, str]
) -> int:
    """Run the tasks, record the verdicts on the job, exit with the worst code."""
    from nodecheck.checks.registry import all_checks

    config = load_config(config_path, env, all_checks())
    setup_logging(
        config.values["log_file"] or None, to_stderr=True, targets=config.values["log_target"]
    )
    log = get_logger()
    nodes = hostlist.expand(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "")
    judged = [n for n in judged if n in nodes]
    args = srun_args(config, nodes, task_args(config, config_path, level, judged))
    try:
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=dict(env),
            timeout=float(config.values["validate_timeout_s"]),
            check=False,
        )
        out, rc = proc.stdout, proc.returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("fabric_stage_srun_failed", error=str(exc))
        out, rc = "", None
    codes = parse_task_lines(out, judged)
    missing = [n for n in judged if n not in codes]
    if missing:
        log.error("fabric_stage_no_verdict", nodes=missing, srun_exit=rc)
    _note(config, env, format_verdicts(codes))
    log.warning("fabric_stage", nodes=nodes, judged=judged, verdicts=codes, srun_exit=rc)
    print(format_verdicts(codes))
    if missing:
        return EXIT_INTERNAL
    return max(codes.values(), default=EXIT_PASSED)


def _note(config: Config, env: Mapping[str, str], text: str) -> None:
    from nodecheck.slurm import SlurmError
    from nodecheck.slurm.jobs import SlurmJobs
    from nodecheck.slurm.scontrol import ScontrolBackend

    job = env.get("SLURM_JOB_ID", "")
    if not job.isdigit():
        return
    cli = ScontrolBackend(config.scontrol, config.slurm_conf or env.get("SLURM_CONF"))
    try:
        SlurmJobs(cli).note_on_job(int(job), text)
    except SlurmError as exc:
        get_logger().error("fabric_stage_verdicts_not_set", error=str(exc))
