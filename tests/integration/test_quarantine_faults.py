"""The quarantine loop and drain ownership under what admins and Slurm really do (issue 24,
items 1-3), on a real Slurm:

- an admin who appends to nodecheck's reason owns the drain: no `validate --pending`,
  `validate NODE`, `resume`, `report` or breaker of nodecheck treats it as nodecheck's;
- a validation job whose prolog fails does not leave a held job, a stuck reservation or a
  validate that waits for its timeout;
- a second validate run leaves the nodes of a run in progress alone;
- validate started while slurmctld has not yet processed a prolog failure waits for it,
  instead of resuming the node under Slurm's own "Prolog error" drain;
- a node without PyTorch is "not validated", never drained by the default validation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from nc_cluster import (
    EPILOG,
    HEALTH,
    PROLOG,
    REPO,
    base_toml,
    broken_mount_class,
    events,
    health,
    nodecheck_cli,
    wait_verdict,
)

from nodecheck.core.reason import parse_reason

JOB_NAME = "nodecheck-validate"
NODECHECK = Path(sys.executable).parent / "nodecheck"


def validation_toml(
    work: Path, checks: str | None, *, command: Path = NODECHECK, extra: str = ""
) -> str:
    """The validation jobs run `command`; `checks` is validate_quick_checks (None: the
    default, as a site that never set it)."""
    quick = f'validate_quick_checks = ["{checks}"]\n' if checks else ""
    return base_toml(
        work,
        # validate_poll_s: a look every second, not every 20 s (the default) in these tests
        extra=f'{quick}escalation = ["drain"]\nvalidate_command = "{command}"\n'
        f"validate_poll_s = 1\n{extra}",
    )


def validate(cluster, *args: str, timeout: int = 90, background: bool = False, config=None):
    argv = [sys.executable, "-m", "nodecheck", "validate", *args, "--timeout", str(timeout)]
    env = {
        "PATH": "/usr/bin:/bin",
        "SLURM_CONF": str(cluster.conf_path),
        "NODECHECK_CONFIG": str(config or cluster.nodecheck_config),
    }
    if background:
        return subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(
        argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout + 60
    )


def lines_of(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if " job " in line}


def validation_jobs(cluster) -> list[dict]:
    """Slurm's records of the validation jobs (squeue --json: 22.05 lists every job it
    still holds, finished ones included, whatever the filters)."""
    out = cluster.run(["squeue", "--json"]).stdout
    return [j for j in json.loads(out)["jobs"] if j["name"] == JOB_NAME]


def job_state(job: dict) -> str:
    state = job["job_state"]
    return state if isinstance(state, str) else state[0]


def unfinished(jobs: list[dict]) -> list[dict]:
    return [j for j in jobs if job_state(j) in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")]


def reservation(cluster) -> str:
    return cluster.scontrol("show", "-o", "reservation", check=False).stdout


def script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_an_admins_words_after_nodecheck_reason_make_the_drain_the_admins(make_slurm_cluster, work):
    """Measured before the fix: `validate --pending` printed "n1 passed: back in service"
    and `resume --node n1` from a host without n1's state said "resumed"; the breaker
    counted the admin's drain as nodecheck's and held back n2's real fault."""
    cluster = make_slurm_cluster(
        nodes=4, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, health_interval=0
    )
    # One nodecheck drain per partition of 4 (floor 1, 25%): an admin's drain counted as
    # nodecheck's would hold back the next real one.
    fine = validation_toml(
        work, "host.mounts", extra="breaker_max_share = 0.25\nbreaker_floor = 1\n"
    )
    cluster.write_nodecheck_config(fine + broken_mount_class(("n1",)))
    job = cluster.sbatch("-w", "n1", "--wrap", "true")
    wait_verdict(cluster, work, "prolog", job)
    cluster.run(["scancel", str(job)], check=False)
    ours = cluster.node_state("n1")[1]
    assert parse_reason(ours) is not None and "[prolog job " in ours, ours
    edited = f"{ours} -- RMA 44 KEEP DRAINED"
    cluster.scontrol("update", "NodeName=n1", f"Reason={edited}")
    # n1 is repaired (its checks pass again); n2 now has the fault.
    cluster.write_nodecheck_config(fine + broken_mount_class(("n2",)))

    health(cluster, "n1")  # the node's own run, with its state: the admin's drain stands
    # DRAINING until Slurm has finished the cancelled job (a loaded machine takes a while)
    cluster.wait_for(lambda: cluster.node_state("n1")[0] == "drained", 30, message="n1 drained")
    assert cluster.node_state("n1") == ("drained", edited)

    pending = validate(cluster, "--pending")
    assert pending.returncode == 0, pending.stdout + pending.stderr
    assert "nothing to validate" in pending.stdout, pending.stdout
    named = validate(cluster, "n1")
    assert named.returncode == 1, named.stdout + named.stderr
    assert "skipped: drained by someone else" in lines_of(named.stdout)["n1"], named.stdout
    assert cluster.node_state("n1") == ("drained", edited)

    report = nodecheck_cli(cluster, "report", "--json")
    assert report.returncode == 0, report.stderr
    assert [n["node"] for n in json.loads(report.stdout)["nodes"]] == []

    # `nodecheck resume` on a login node, which has no state of n1's at all.
    login = work / "login.toml"
    login.write_text(fine.replace(f"{work}/state/", f"{work}/login-state/"))
    env = {
        "PATH": "/usr/bin:/bin",
        "SLURM_CONF": str(cluster.conf_path),
        "NODECHECK_CONFIG": str(login),
    }
    argv = [sys.executable, "-m", "nodecheck", "resume", "--node", "n1", "--force"]
    nostate = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert nostate.returncode == 1, nostate.stdout + nostate.stderr
    assert "refused" in nostate.stdout and "not exactly" in nostate.stdout, nostate.stdout
    # ... and on the node itself, whose state keeps the reason nodecheck set.
    onnode = nodecheck_cli(cluster, "resume", "--node", "n1")
    assert onnode.returncode == 1, onnode.stdout + onnode.stderr
    assert "refused" in onnode.stdout, onnode.stdout
    assert cluster.node_state("n1") == ("drained", edited)

    # The breaker counts nodecheck's drains only: n2's real fault drains n2.
    job = cluster.sbatch("-w", "n2", "--wrap", "true")
    verdict = wait_verdict(cluster, work, "prolog", job)
    assert verdict["action"] == "drained", verdict
    state, reason = cluster.node_state("n2")
    assert state.startswith("drain") and reason.startswith("nodecheck: host.mounts "), reason


def test_a_validation_job_whose_prolog_fails_leaves_no_held_job_and_no_stuck_reservation(
    make_slurm_cluster, work
):
    """Measured before the fix: the job sat held ("launch_failed_requeued_held"), validate
    waited for its whole --timeout and left it queued; the next validate exited 2."""
    cluster = make_slurm_cluster(
        nodes=2, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, health_interval=0
    )
    fine = validation_toml(work, "host.mounts")
    # n1 fails the fast checks in the prolog only: the validation job never starts there.
    cluster.write_nodecheck_config(fine + broken_mount_class(("n1",), phases=("prolog",)))
    started = time.monotonic()
    first = validate(cluster, "n1", timeout=45)
    took = time.monotonic() - started
    line = lines_of(first.stdout).get("n1", "")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "failed in the prolog: nodecheck: host.mounts " in line, first.stdout + first.stderr
    assert took < 30, f"validate took {took:.1f}s"
    assert unfinished(validation_jobs(cluster)) == []
    assert "nodecheck_validation" not in reservation(cluster)
    state, reason = cluster.node_state("n1")
    assert state.startswith("drain") and "[prolog job " in reason, reason

    cluster.write_nodecheck_config(fine)  # repaired
    second = validate(cluster, "n1")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "passed" in lines_of(second.stdout)["n1"], second.stdout
    assert cluster.node_state("n1")[0] == "idle"
    assert "nodecheck_validation" not in reservation(cluster)


def test_a_second_validate_run_leaves_the_nodes_of_a_run_in_progress_alone(
    make_slurm_cluster, work
):
    """Measured before the fix: the second run reserved, resumed and submitted on n1 again
    (job 2 "passed: back in service" beside the first run's job 1)."""
    cluster = make_slurm_cluster(
        nodes=2, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, health_interval=0
    )
    # The validation job takes 8 s longer than usual: long enough to overlap.
    slow = script(work / "slow-validate", f'#!/bin/sh\n/bin/sleep 8\nexec {NODECHECK} "$@"\n')
    cluster.write_nodecheck_config(validation_toml(work, "host.mounts", command=slow))
    first = validate(cluster, "n1", background=True)
    [running] = cluster.wait_for(
        lambda: [j for j in validation_jobs(cluster) if job_state(j) == "RUNNING"],
        30,
        message="the first run's validation job running",
    )
    user = cluster.sbatch("-w", "n1", "--wrap", "true")  # a user wants n1 meanwhile
    second = validate(cluster, "n1")
    assert second.returncode == 1, second.stdout + second.stderr
    line = lines_of(second.stdout)["n1"]
    host_pid = running["comment"].split("[run ")[1].rsplit(":", 1)[0]  # the first run's
    taken = f"being validated by another validate run (run {host_pid}, job {running['job_id']})"
    assert taken in line, line
    jobs = {j["job_id"]: j for j in validation_jobs(cluster)}
    assert list(jobs) == [running["job_id"]]  # the second run submitted nothing
    if job_state(jobs[running["job_id"]]) == "RUNNING":  # still validating: still reserved
        assert "Nodes=n1 " in reservation(cluster), reservation(cluster)
        assert cluster.job_state(user) == "PENDING"
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err
    assert "passed" in lines_of(out)["n1"], out
    assert "nodecheck_validation" not in reservation(cluster)
    assert cluster.node_state("n1")[0] in ("idle", "allocated", "completing", "mixed")


def test_validate_right_after_a_prolog_drain_waits_until_slurm_has_settled_it(
    make_slurm_cluster, work
):
    """Measured before the fix: validate resumed n1 while its prolog was still failing;
    slurmctld then drained it as "Prolog error" and the validation job stayed pending until
    validate's timeout."""
    # The prolog reports its failure 5 s late, as a busy slurmd/slurmctld does.
    slow = script(
        work / "slow-prolog",
        f"#!/bin/sh\n{PROLOG}\nrc=$?\nif [ $rc -ne 0 ]; then /bin/sleep 5; fi\nexit $rc\n",
    )
    cluster = make_slurm_cluster(
        nodes=2, prolog=slow, epilog=EPILOG, health_program=HEALTH, health_interval=0
    )
    fine = validation_toml(work, "host.mounts")
    cluster.write_nodecheck_config(fine + broken_mount_class(("n1",), phases=("prolog",)))
    cluster.sbatch("-w", "n1", "--wrap", "true")
    state = cluster.wait_for(
        lambda: (s := cluster.node_state("n1"))[1].startswith("nodecheck: ") and s,
        30,
        message="nodecheck's drain of n1",
    )
    assert state[0] == "draining", state  # the prolog has not ended yet
    cluster.write_nodecheck_config(fine)  # the fault is gone at once
    out = validate(cluster, "--pending", timeout=40)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passed" in lines_of(out.stdout)["n1"], out.stdout
    assert cluster.node_state("n1")[0] == "idle"
    assert "nodecheck_validation" not in reservation(cluster)


def test_without_pytorch_the_default_validation_validates_nothing_and_drains_nothing(
    make_slurm_cluster, work
):
    """Measured before the fix: both nodes "failed: drained (nodecheck: deep.gemm node:
    PyTorch is not installed ...)"."""
    cluster = make_slurm_cluster(
        nodes=2, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, health_interval=0
    )
    # The validation job's Python cannot import torch, as where the .deb was installed
    # without the `active` extra: `import torch` raises ImportError.
    no_torch = script(
        work / "nodecheck-without-torch",
        f"#!{sys.executable}\nimport sys\nsys.modules['torch'] = None\n"
        "from nodecheck.entry.cli import main\nsys.exit(main())\n",
    )
    fine = validation_toml(work, None, command=no_torch)  # validate_quick_checks: default
    cluster.write_nodecheck_config(fine + broken_mount_class(("n2",)))
    job = cluster.sbatch("-w", "n2", "--wrap", "true")
    wait_verdict(cluster, work, "prolog", job)
    cluster.run(["scancel", str(job)], check=False)
    ours = cluster.node_state("n2")[1]
    cluster.write_nodecheck_config(fine)  # n2 repaired; n1 healthy all along

    out = validate(cluster, "n[1-2]")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = lines_of(out.stdout)
    for node in ("n1", "n2"):
        line = lines[node]
        assert "not validated" in line and "PyTorch is not installed" in line, out.stdout
        assert "nodecheck[active]" in line and "failed" not in line, line
    assert cluster.node_state("n1") == ("idle", "")  # in service, as it was found
    assert cluster.node_state("n2") == ("drained", ours)  # not returned, its reason kept
    assert "nodecheck_validation" not in reservation(cluster)
    said = {e["node"] for e in events(work, "validation_not_possible")}
    assert said == {"n1", "n2"}
    history = nodecheck_cli(cluster, "report", "--history", "n1", "--json")
    assert history.returncode == 0, history.stderr
    found = [e for e in json.loads(history.stdout)["events"] if e["source"] == "nodecheck"]
    assert [e["what"] for e in found] == ["validation not possible"], found
    assert "nodecheck[active]" in found[0]["detail"], found


def test_a_run_that_times_out_or_is_stopped_leaves_nodes_and_reservation_as_it_found_them(
    make_slurm_cluster, work
):
    """Before the fix a timed-out run left its nodes in the reservation with their jobs
    still queued or running ("timed out: still in the reservation")."""
    cluster = make_slurm_cluster(
        nodes=2, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, health_interval=0
    )
    slow = script(work / "slow-validate", f'#!/bin/sh\n/bin/sleep 60\nexec {NODECHECK} "$@"\n')
    fine = validation_toml(work, "host.mounts", command=slow)
    cluster.write_nodecheck_config(fine + broken_mount_class(("n1",)))
    job = cluster.sbatch("-w", "n1", "--wrap", "true")
    wait_verdict(cluster, work, "prolog", job)
    cluster.run(["scancel", str(job)], check=False)
    ours = cluster.node_state("n1")[1]
    cluster.write_nodecheck_config(fine)  # repaired, but its validation never ends in time

    out = validate(cluster, "n[1-2]", timeout=8)
    lines = lines_of(out.stdout)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "timed out: validation cancelled; left as found (drained: " in lines["n1"], out.stdout
    assert "timed out: validation cancelled; left as found (in service)" in lines["n2"]
    assert cluster.node_state("n1")[0].startswith("drain")
    assert cluster.node_state("n1")[1] == ours  # still nodecheck's, for the next validate
    assert unfinished(validation_jobs(cluster)) == []
    assert "nodecheck_validation" not in reservation(cluster)

    # Stopped by SIGTERM (systemd, cron's end) while its job runs: the same.
    running = validate(cluster, "n2", background=True)
    cluster.wait_for(
        lambda: [j for j in unfinished(validation_jobs(cluster)) if job_state(j) == "RUNNING"],
        30,
        message="the validation job running",
    )
    running.terminate()
    stdout, stderr = running.communicate(timeout=30)
    assert "interrupted: validation cancelled; left as found (in service)" in stdout, (
        stdout + stderr
    )
    cluster.wait_for(lambda: not unfinished(validation_jobs(cluster)), 15, message="jobs gone")
    assert "nodecheck_validation" not in reservation(cluster)
    assert cluster.node_state("n2")[0] in ("idle", "completing")


def test_report_names_the_nodes_left_in_the_validation_reservation(make_slurm_cluster, work):
    """A node left in the reservation (a validate run that died, a drain the breaker held)
    takes no user job: `report` says so, from one read of the reservation."""
    cluster = make_slurm_cluster(nodes=2)
    cluster.write_nodecheck_config(validation_toml(work, "host.mounts"))
    quiet = nodecheck_cli(cluster, "report", "--json")
    assert quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout)["in_validation"]["nodes"] == []
    cluster.scontrol(
        "create", "reservation", "ReservationName=nodecheck_validation", "Nodes=n2",
        "Users=root", "StartTime=now", "Duration=infinite", "Flags=MAINT,IGNORE_JOBS",
    )  # fmt: skip
    doc = json.loads(nodecheck_cli(cluster, "report", "--json").stdout)
    assert doc["in_validation"]["reservation"] == "nodecheck_validation"
    assert [row["node"] for row in doc["in_validation"]["nodes"]] == ["n2"]
    text = nodecheck_cli(cluster, "report").stdout
    assert "IN VALIDATION RESERVATION nodecheck_validation" in text and "  n2 " in text, text
