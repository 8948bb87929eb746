#!/usr/bin/env python3
"""Capture real `squeue --json` job records of the Slurm installed here, as test fixtures
for the quarantine loop (nodecheck/slurm/job_json.py reads them by Slurm's codes).

Starts a throw-away 2-node cluster (tools/testcluster.py) whose prolog fails on n1, then
submits jobs named `nodecheck-validate` (as the loop does) in each state the loop must
tell apart:

    1  held at submission (sbatch --hold), never started        PENDING, JobHeldUser, restarts 0
    2  its prolog failed on n1, requeued and held by Slurm       PENDING, JobHeldUser, restarts 1
    3  its prolog failed on n1 with --no-requeue                 CANCELLED
    4  exit 0 on n2                                             COMPLETED
    5  exit 3 on n2                                             FAILED (exit code 3)
    6  killed by SIGKILL on n2                                  FAILED (signal 9)
    (job 1 also gets an AdminComment, as a validation job sets one to say why)

and saves `squeue --json` into OUT/squeue-json-validation-jobs-<major.minor>.json, byte for
byte, with OUT/squeue-json-validation-jobs-<major.minor>.md naming release, date, jobs.

    python3 tools/slurm-roots/capture-job-json.py tests/fixtures/real/slurm
Root only (the cluster's daemons run as root).
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import testcluster

NAME = "nodecheck-validate"
MARK = "[run capture:4242:123456]"


def package_version() -> str:
    res = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "slurmctld"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return res.stdout.strip() or "unknown"


def main(out: Path) -> int:
    major, minor, patch = testcluster.slurm_version()
    series = f"{major}.{minor:02d}"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="capture-jobs-", dir="/tmp") as state_dir:
        prolog = Path(state_dir) / "prolog"
        prolog.write_text('#!/bin/sh\n[ "$SLURMD_NODENAME" = n1 ] && exit 1\nexit 0\n')
        prolog.chmod(0o755)
        cluster = testcluster.TestCluster(Path(state_dir) / "c", nodes=2, prolog=prolog)
        with cluster:

            def submit(node: str, *extra: str, script: str = "exit 0") -> int:
                comment = f"nodecheck validate {node} level=quick: capture {MARK}"
                return cluster.sbatch(
                    f"--job-name={NAME}", f"--comment={comment}", "-w", node,
                    "-o", "/dev/null", *extra, "--wrap", script,
                )  # fmt: skip

            def settle(job: int, states: tuple[str, ...]) -> None:
                cluster.wait_for(lambda: cluster.job_state(job) in states, 30,
                                 message=f"job {job} in {states}")  # fmt: skip

            held = submit("n2", "--hold")
            cluster.scontrol(
                "update", f"JobId={held}", "AdminComment=not validated: capture's words"
            )
            requeued = submit("n1")
            cluster.wait_for(
                lambda: cluster.node_state("n1")[0].startswith("drain"), 30, message="n1 drain"
            )
            time.sleep(1)  # the requeue and hold follow the drain
            cluster.resume("n1")
            no_requeue = submit("n1", "--no-requeue")
            settle(no_requeue, ("CANCELLED",))
            passed = submit("n2")
            settle(passed, ("COMPLETED",))
            failed = submit("n2", script="exit 3")
            settle(failed, ("FAILED",))
            killed = submit("n2", script="kill -9 $$")
            settle(killed, ("FAILED",))
            res = cluster.run(["squeue", "--json"])
            name = f"squeue-json-validation-jobs-{series}"
            (out / f"{name}.json").write_text(res.stdout)
    release = f"Slurm {major}.{minor:02d}.{patch} (Debian slurm-wlm {package_version()})"
    (out / f"{name}.md").write_text(
        f"# {name}.json\n\n"
        f"`squeue --json` (exit 0) of {release}, captured {datetime.date.today().isoformat()} by\n"
        "`tools/slurm-roots/capture-job-json.py` from a live 2-node test cluster whose prolog\n"
        "fails on n1. Every job is named `nodecheck-validate`, commented as the loop does:\n\n"
        f"- job {held}: `sbatch --hold` on n2, never released; AdminComment set\n"
        f"- job {requeued}: its prolog failed on n1: requeued and held by Slurm\n"
        f"- job {no_requeue}: its prolog failed on n1, `--no-requeue`: cancelled by Slurm\n"
        f"- job {passed}: `exit 0` on n2\n"
        f"- job {failed}: `exit 3` on n2\n"
        f"- job {killed}: `kill -9 $$` on n2\n"
    )
    print(f"captured {release} into {out}/{name}.json")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
