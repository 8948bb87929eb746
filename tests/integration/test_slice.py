"""The vertical slice on a real Slurm: the project's prolog/epilog drain (or not) real nodes."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from nc_cluster import (
    base_toml,
    events,
    nodecheck_cli,
    wait_drained,
    wait_verdict,
)

MISSING_MOUNT = "/nodecheck-test-missing-mount"


BROKEN_N1 = f"""
[[node_class]]
name = "broken"
match = ["n1"]
[node_class.checks."host.mounts"]
required = ["{MISSING_MOUNT}"]
"""


def verdicts(work: Path, phase: str, job: int) -> list[dict]:
    return events(work, "verdict", phase=phase, job=job)


def recording_scontrol(work: Path) -> tuple[Path, Path]:
    """An scontrol that records each call, then does the real thing."""
    calls = work / "scontrol-calls"
    script = work / "scontrol-recorder"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec /usr/bin/scontrol "$@"\n')
    script.chmod(0o755)
    return script, calls


def test_healthy_nodes_run_the_job_with_no_controller_call(clean_slurm_cluster, work):
    cluster = clean_slurm_cluster
    scontrol, calls = recording_scontrol(work)
    cluster.write_nodecheck_config(base_toml(work, scontrol=str(scontrol)))
    job = cluster.sbatch("-w", "n1", "--wrap", "echo hello")
    cluster.wait_for(lambda: cluster.job_state(job) == "COMPLETED", 30, message="job done")
    cluster.wait_for(lambda: verdicts(work, "epilog", job), 15, message="epilog verdict")
    [prolog] = verdicts(work, "prolog", job)
    assert prolog["status"] == "PASS" and prolog["node"] == "n1"
    assert prolog["checks"] >= 3
    assert verdicts(work, "epilog", job)[0]["status"] == "PASS"
    assert cluster.node_state("n1")[0] == "idle"
    assert not calls.exists(), f"healthy path called scontrol: {calls.read_text()}"


def test_failing_prolog_drains_only_that_node_and_the_job_runs_elsewhere(clean_slurm_cluster, work):
    cluster = clean_slurm_cluster
    cluster.write_nodecheck_config(base_toml(work, extra=BROKEN_N1))
    pinned = cluster.sbatch("-w", "n1", "--wrap", "echo pinned")
    reason = wait_drained(cluster, "n1", 30)
    assert reason.startswith(f"nodecheck: host.mounts {MISSING_MOUNT}: not mounted [prolog job")
    assert str(pinned) in reason
    # The pinned job was requeued (held), never ran; the healthy node stays idle.
    cluster.wait_for(lambda: cluster.job_state(pinned) == "PENDING", 30, message="requeued")
    assert cluster.node_state("n2")[0] == "idle"
    free = cluster.sbatch("--wrap", "echo anywhere")
    cluster.wait_for(lambda: cluster.job_state(free) == "COMPLETED", 30, message="free job")
    node = cluster.scontrol("show", "job", str(free)).stdout
    assert "NodeList=n2" in node
    cluster.run(["scancel", str(pinned)], check=False)


def test_leftover_process_drains_in_the_epilog(clean_slurm_cluster, work):
    cluster = clean_slurm_cluster
    cluster.write_nodecheck_config(base_toml(work))
    pidfile = work / "stray.pid"
    script = work / "job.sh"
    # A job step that daemonises a child: it escapes proctrack/linuxproc but keeps the
    # job's environment (SLURM_JOB_ID), exactly what the epilog check looks for.
    script.write_text(
        "#!/bin/sh\n"
        f"setsid /bin/sh -c 'echo $$ > {pidfile}; exec sleep 300' </dev/null >/dev/null 2>&1 &\n"
        f"while [ ! -s {pidfile} ]; do sleep 0.1; done\n"
    )
    script.chmod(0o755)
    job = cluster.sbatch("-w", "n2", str(script))
    try:
        reason = wait_drained(cluster, "n2", 40)
        stray = int(pidfile.read_text())
        assert reason.startswith(f"nodecheck: host.procs node: 1 processes left after job {job}")
        assert f"{stray} sleep" in reason and reason.endswith(
            f"[epilog job {job} sev=high act=cleanup]"
        )
        # The epilog drains, then records its run and exits; only then is the job done.
        cluster.wait_for(lambda: cluster.job_state(job) == "COMPLETED", 15, message="job done")
        assert cluster.node_state("n1")[0] == "idle"
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_resume_only_resumes_our_own_drain(clean_slurm_cluster, work):
    cluster = clean_slurm_cluster
    cluster.write_nodecheck_config(base_toml(work, extra=BROKEN_N1))
    job = cluster.sbatch("-w", "n1", "--wrap", "true")
    wait_drained(cluster, "n1", 30)
    wait_verdict(cluster, work, "prolog", job)  # the prolog has exited: nothing races us
    cluster.run(["scancel", str(job)], check=False)
    wait_verdict(cluster, work, "epilog", job)  # nor does the cancelled job's epilog
    cluster.drain("n2", "replacing PSU, do not touch")

    still_broken = nodecheck_cli(cluster, "resume", "--node", "n1")
    assert still_broken.returncode == 1 and "checks still fail" in still_broken.stdout
    assert cluster.node_state("n1")[0].startswith("drain")

    cluster.write_nodecheck_config(base_toml(work))  # the admin fixed the mount
    fixed = nodecheck_cli(cluster, "resume", "--node", "n1")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "n1: resumed" in fixed.stdout
    cluster.reconfigure()
    cluster.wait_for(lambda: cluster.node_state("n1")[0] == "idle", 30, message="n1 idle")

    admin = nodecheck_cli(cluster, "resume", "--node", "n2")
    assert admin.returncode == 1 and "refused: drained by someone else" in admin.stdout
    assert cluster.node_state("n2") == ("drained", "replacing PSU, do not touch")


def test_hung_probe_ends_at_its_timeout_and_the_prolog_within_budget(clean_slurm_cluster, work):
    cluster = clean_slurm_cluster
    hung_proc = work / "hung-proc"
    hung_proc.mkdir()
    os.mkfifo(hung_proc / "meminfo")  # reading it blocks forever, like a dying device file
    extra = f"""
[[node_class]]
name = "hung"
match = ["n1"]
procfs_root = "{hung_proc}"
budget_s = 8
[node_class.checks."host.mem"]
timeout_s = 2
[node_class.checks."host.mounts"]
enabled = false
[node_class.checks."host.services"]
enabled = false
"""
    cluster.write_nodecheck_config(base_toml(work, extra=extra))
    started = time.monotonic()
    job = cluster.sbatch("-w", "n1", "--wrap", "true")
    reason = wait_drained(cluster, "n1", 30)
    assert reason.startswith("nodecheck: host.mem node: probe hung after 2.")
    assert "(+" not in reason  # the checks it kept from running are not failures
    verdict = wait_verdict(cluster, work, "prolog", job)
    assert verdict["duration_s"] < 8 + 0.5
    assert time.monotonic() - started < 25
    cluster.run(["scancel", str(job)], check=False)
