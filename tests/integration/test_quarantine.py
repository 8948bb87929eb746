"""The quarantine loop on a real Slurm: `nodecheck validate` reserves the nodes, runs one
validation job per node, returns the ones that pass and drains the ones that fail, climbs
the escalation ladder from the node's history, and alerts a real Alertmanager.

The fault is replayed at the boundary: node n1's class requires a mount that does not
exist, checked only in manual runs (so the prolog never sees it, as with a deep-tier
fault), and the validation level runs that check.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from alertmanager import active_alerts, alertmanager
from nc_cluster import (
    EPILOG,
    HEALTH,
    MISSING_MOUNT,
    PROLOG,
    REPO,
    base_toml,
    broken_mount_class,
    events,
    health,
    wait_verdict,
)


def validation_toml(work: Path, alert_url: str, checks: str, ladder: str) -> str:
    """Settings every quarantine test starts with: where alerts go, what a validation job
    runs, the escalation ladder, and the validation jobs' executable (this venv's)."""
    return base_toml(
        work,
        extra=f"""
alert_url = "{alert_url}"
validate_quick_checks = ["{checks}"]
escalation = {ladder}
validate_command = "{Path(sys.executable).parent / "nodecheck"}"
validate_poll_s = 1
""",
    )


def toml(work: Path, alert_url: str, broken: tuple[str, ...], ladder: str) -> str:
    """Validation by host.mounts; on the `broken` nodes it fails in manual runs only (the
    validation job's), so the prolog never sees the fault, as with a deep-tier one."""
    text = validation_toml(work, alert_url, "host.mounts", ladder)
    return text + (broken_mount_class(broken, phases=("manual",)) if broken else "")


def deep_toml(work: Path, alert_url: str, slow: tuple[str, ...], ladder: str) -> str:
    """Validation by a real deep check: deep.gemm through torch on the CPU (small). On the
    `slow` nodes the expected figure is one no device reaches, as with a GPU that delivers
    a fraction of its datasheet: the fault replayed at the judging boundary."""
    text = validation_toml(work, alert_url, "deep.gemm", ladder)
    gemm = 'device = "cpu"\nprecisions = ["tf32"]\ncpu_size = 128\nrepeats = 2\n'
    text += f'\n[checks."deep.gemm"]\n{gemm}'
    if slow:
        names = ", ".join(f'"{n}"' for n in slow)
        text += f"""
[[node_class]]
name = "slow-gpu"
match = [{names}]
[node_class.checks."deep.gemm"]
{gemm}expected = 1e6
"""
    return text


def validate(cluster, *args: str, background: bool = False):
    argv = [sys.executable, "-m", "nodecheck", "validate", *args, "--timeout", "90"]
    env = {
        "PATH": "/usr/bin:/bin",
        "SLURM_CONF": str(cluster.conf_path),
        "NODECHECK_CONFIG": str(cluster.nodecheck_config),
    }
    if background:
        return subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=150)


def job_field(cluster, job: int, key: str) -> str:
    out = cluster.scontrol("show", "-o", "job", str(job)).stdout
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return fields.get(key, "")


def test_validate_returns_the_healthy_drains_the_faulty_and_keeps_users_out(
    make_slurm_cluster, work
):
    cluster = make_slurm_cluster(
        nodes=3, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, health_interval=0
    )
    with alertmanager(work / "am") as url:
        cluster.write_nodecheck_config(toml(work, url, ("n1",), '["drain", "replace"]'))
        cluster.scontrol("update", "NodeName=n3", "State=DRAIN", "Reason=admin: disk swap")
        running = validate(cluster, "n[1-3]", "--why", "after repair", background=True)
        # While the loop runs, a user's job asks for n2: it waits for the reservation.
        cluster.wait_for(
            lambda: "nodecheck_validation" in cluster.scontrol("show", "reservation").stdout,
            30,
            message="the maintenance reservation",
        )
        user_job = cluster.sbatch("-w", "n2", "--wrap", "/bin/true")
        cluster.scontrol("reconfigure")  # the scheduler looks at the new job now
        why = cluster.wait_for(
            lambda: (r := job_field(cluster, user_job, "Reason")) not in ("", "None") and r,
            30,
            message="the user job's pending reason",
        )
        assert job_field(cluster, user_job, "JobState") == "PENDING"
        assert "Reserv" in why or "ReqNodeNotAvail" in why, why
        out, err = running.communicate(timeout=150)
        assert running.returncode == 1, out + err  # n1 failed, n3 skipped
        lines = {line.split()[0]: line for line in out.splitlines() if " job " in line}
        assert "passed" in lines["n2"], out
        assert "failed: drained" in lines["n1"], out
        assert "drained by someone else" in lines["n3"], out

        state, reason = cluster.node_state("n1")
        assert state.startswith("drain")
        assert reason.startswith("nodecheck: host.mounts ")
        assert MISSING_MOUNT in reason and "[validate job " in reason
        assert not cluster.node_state("n2")[0].startswith(("drain", "down"))  # in service
        assert cluster.node_state("n3")[1].startswith("admin: disk swap")  # sacred
        # The reservation is gone; the user's job runs on n2 only now that n2 has passed.
        assert "nodecheck_validation" not in cluster.scontrol("show", "reservation").stdout
        cluster.wait_for(
            lambda: job_field(cluster, user_job, "JobState") == "COMPLETED",
            60,
            message="the user job on the returned node",
        )
        # Accounting keeps what each validation was: name and comment.
        job = int(lines["n1"].split()[2])
        assert job_field(cluster, job, "JobName") == "nodecheck-validate"
        assert (
            "nodecheck validate n1 level=quick: after repair"
            in cluster.scontrol("show", "job", str(job)).stdout
        )
        assert active_alerts(url) == []  # the first rung drains for a repair, no alert

        # Still failing after the "repair": the ladder's next rung holds it for replacement
        # and the real Alertmanager has the alert.
        again = validate(cluster, "n1")
        assert again.returncode == 1 and "held for replacement" in again.stdout, again.stdout
        assert "act=replace" in cluster.node_state("n1")[1]
        [alert] = active_alerts(url)
        assert alert["labels"]["node"] == "n1"
        assert alert["labels"]["action"] == "replace"
        assert alert["labels"]["check"] == "host.mounts"

        # Repaired for real: validation passes, the node returns, the alert resolves.
        cluster.write_nodecheck_config(toml(work, url, (), '["drain", "replace"]'))
        fixed = validate(cluster, "n1")
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert cluster.node_state("n1")[0] == "idle", cluster.scontrol("show", "res").stdout
        deadline = time.monotonic() + 10
        while active_alerts(url) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert active_alerts(url) == []


def boot_time(cluster, node: str) -> str:
    out = cluster.scontrol("show", "node", node).stdout
    return next(w for w in out.split() if w.startswith("BootTime="))


def test_a_node_that_keeps_failing_is_rebooted_once_then_held_for_replacement(
    make_slurm_cluster, work
):
    cluster = make_slurm_cluster(
        nodes=2,
        prolog=PROLOG,
        epilog=EPILOG,
        health_program=HEALTH,
        health_interval=0,
        reboot_program=True,  # restarts the node's slurmd with -b: Slurm sees a reboot
    )
    with alertmanager(work / "am") as url:
        cluster.write_nodecheck_config(
            deep_toml(work, url, ("n1",), '["drain", "reboot", "replace"]')
        )
        first = validate(cluster, "n1")
        assert "failed: drained" in first.stdout, first.stdout + first.stderr
        booted = boot_time(cluster, "n1")
        # The admin "repaired" it, but it still fails: one reboot through Slurm, validated
        # again after it, and held for replacement with an alert the Alertmanager receives.
        second = validate(cluster, "n1", "--why", "after repair")
        assert second.returncode == 1, second.stdout + second.stderr
        assert "held for replacement" in second.stdout, second.stdout
        jobs = second.stdout.split()[2].split(",")
        assert len(jobs) == 2, second.stdout  # before and after the reboot
        assert boot_time(cluster, "n1") != booted  # slurmd reported a fresh boot
        state, reason = cluster.node_state("n1")
        assert state.startswith("drain") and "act=replace" in reason, reason
        assert reason.startswith("nodecheck: deep.gemm ") and "TFLOP/s" in reason, reason
        [alert] = active_alerts(url)
        assert alert["labels"]["node"] == "n1" and alert["labels"]["action"] == "replace"
        assert alert["labels"]["check"] == "deep.gemm"
        assert cluster.node_state("n2")[0] == "idle"  # never touched
        assert "nodecheck_validation" not in cluster.scontrol("show", "reservation").stdout


def test_report_history_merges_nodecheck_history_and_slurmdbd_events(make_slurm_cluster, work):

    cluster = make_slurm_cluster(
        nodes=2,
        prolog=PROLOG,
        epilog=EPILOG,
        health_program=HEALTH,
        health_interval=0,
        accounting=True,  # slurmdbd with a private MariaDB: Slurm keeps node events
    )
    cluster.write_nodecheck_config(toml(work, "", ("n1",), '["drain"]'))
    assert "failed: drained" in validate(cluster, "n1").stdout
    cluster.write_nodecheck_config(toml(work, "", (), '["drain"]'))
    assert validate(cluster, "n1").returncode == 0
    env = {
        "PATH": "/usr/bin:/bin",
        "SLURM_CONF": str(cluster.conf_path),
        "NODECHECK_CONFIG": str(cluster.nodecheck_config),
    }

    def report() -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "nodecheck", "report", "--history", "n[1-2]", "--json"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    # slurmdbd writes node events as the controller sends them: wait for the drain's.
    got = cluster.wait_for(
        lambda: (
            (r := report())
            and any(
                e["source"] == "slurmdbd" and e["detail"].startswith("nodecheck: host.mounts")
                for e in r["events"]
            )
            and r
        ),
        60,
        message="the drain in slurmdbd's node events",
    )
    assert got["slurmdbd"] == "ok"
    n1 = [(e["source"], e["what"]) for e in got["events"] if e["node"] == "n1"]
    ours = [what for source, what in n1 if source == "nodecheck"]
    assert ours == ["validation failed", "validation passed"]
    # Drained (`drain`), or draining / drained inside the maintenance reservation (`drng$`,
    # `drain$`), as slurmdbd received the state while the node was still in it.
    assert [w for s, w in n1 if s == "slurmdbd" and w.rstrip("$") in ("drain", "drng")], n1
    assert not [e for e in got["events"] if e["node"] == "n2" and e["source"] == "nodecheck"]


def test_idle_mode_takes_a_share_of_the_partition_oldest_first_and_pending_takes_our_drains(
    make_slurm_cluster, work
):
    cluster = make_slurm_cluster(
        nodes=4, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, health_interval=0
    )
    cluster.write_nodecheck_config(toml(work, "", (), '["drain"]'))
    busy = cluster.sbatch("-w", "n4", "--wrap", "sleep 300")  # not idle: never taken
    cluster.wait_for(lambda: cluster.job_state(busy) == "RUNNING", 30, message="n4 busy")

    def validated(out: str) -> list[str]:
        return sorted(line.split()[0] for line in out.splitlines() if " job " in line)

    picked = []
    for _ in range(4):  # 25% of 4 nodes: one node per run
        run = validate(cluster, "--idle", "--max-share", "25%")
        assert run.returncode == 0, run.stdout + run.stderr
        picked += validated(run.stdout)
    # Never-validated nodes first (by name), then the longest since validation; n4 is busy.
    assert picked == ["n1", "n2", "n3", "n1"]
    job = run.stdout.split()[2]
    assert "periodic validation" in cluster.scontrol("show", "job", job).stdout

    # --pending: only the nodes nodecheck drained, not an admin's.
    cluster.run(["scancel", str(busy)], check=False)
    cluster.scontrol(
        "update",
        "NodeName=n1",
        "State=DRAIN",
        "Reason=nodecheck: gpu.ecc gpu3: 2 DBE [prolog job 7 sev=critical act=reset-gpu]",
    )
    cluster.scontrol("update", "NodeName=n2", "State=DRAIN", "Reason=admin: RMA 44")
    pending = validate(cluster, "--pending")
    assert validated(pending.stdout) == ["n1"], pending.stdout
    assert "passed" in pending.stdout and cluster.node_state("n1")[0] == "idle"
    assert cluster.node_state("n2")[1].startswith("admin: RMA 44")


def test_the_deep_tier_itself_decides_a_validation(make_slurm_cluster, work):
    """The validation jobs run a real deep check (deep.gemm through torch on the CPU). On
    n1 the expected figure is one no device reaches, as a GPU that delivers a fraction of
    its datasheet would: n1 is drained with the measured figure, n2 returns."""
    cluster = make_slurm_cluster(
        nodes=2, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, health_interval=0
    )
    cluster.write_nodecheck_config(deep_toml(work, "", ("n1",), '["drain"]'))
    out = validate(cluster, "n[1-2]", "--why", "turn-up")
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if " job " in line}
    assert "passed" in lines["n2"], out.stdout + out.stderr
    assert "failed: drained" in lines["n1"], out.stdout + out.stderr
    reason = cluster.node_state("n1")[1]
    assert reason.startswith("nodecheck: deep.gemm "), reason
    assert "TFLOP/s" in reason and "[validate job " in reason, reason


def test_resume_via_validation_keeps_a_passing_node_drained_until_validate_pending(
    make_slurm_cluster, work
):
    cluster = make_slurm_cluster(
        nodes=2, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, health_interval=0
    )
    broken = toml(work, "", (), '["drain"]').replace(
        "escalation =", 'resume_via = "validation"\nescalation ='
    )
    broken += broken_mount_class(("n1",))
    cluster.write_nodecheck_config(broken)
    job = cluster.sbatch("-w", "n1", "--wrap", "true")
    wait_verdict(cluster, work, "prolog", job)  # drained, and the drain recorded
    cluster.run(["scancel", str(job)], check=False)
    ours = cluster.node_state("n1")[1]
    assert ours.startswith("nodecheck: host.mounts ") and "[prolog job " in ours

    # Repaired: health passes, but does not resume; the node waits for validation.
    cluster.write_nodecheck_config(
        toml(work, "", (), '["drain"]').replace(
            "escalation =", 'resume_via = "validation"\nescalation ='
        )
    )
    health(cluster, "n1")
    state, reason = cluster.node_state("n1")
    assert state.startswith("drain") and reason == ours
    [held] = events(work, "awaiting_validation", node="n1")
    assert held["reason"] == ours

    pending = validate(cluster, "--pending")
    assert pending.returncode == 0, pending.stdout + pending.stderr
    assert "n1" in pending.stdout and "passed" in pending.stdout
    assert cluster.node_state("n1")[0] == "idle"
    health(cluster, "n1")  # the stale marker is forgotten, nothing else happens
    assert cluster.node_state("n1")[0] == "idle", cluster.scontrol("show", "reservation").stdout
    assert events(work, "resume", node="n1")[-1]["result"] == "not drained"


def test_a_new_node_is_drained_by_health_until_it_passes_validation(make_slurm_cluster, work):
    cluster = make_slurm_cluster(
        nodes=2, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, health_interval=0
    )
    cluster.write_nodecheck_config(
        toml(work, "", (), '["drain"]').replace(
            "escalation =", "validate_new_nodes = true\nescalation ="
        )
    )

    health(cluster, "n1")  # as slurmd runs it at start, before the node takes a job
    state, reason = cluster.node_state("n1")
    assert state.startswith("drain"), state
    assert reason.startswith("nodecheck: validate.new node: never validated"), reason
    health(cluster, "n1")  # passing health runs do not resume it: only validation does
    assert cluster.node_state("n1")[0].startswith("drain")
    assert events(work, "awaiting_validation", node="n1")

    pending = validate(cluster, "--pending")
    assert pending.returncode == 0 and "n1" in pending.stdout, pending.stdout + pending.stderr
    assert cluster.node_state("n1")[0] == "idle"
    health(cluster, "n1")  # validated now: left in service, the old marker forgotten
    assert cluster.node_state("n1")[0] == "idle"
    assert events(work, "resume", node="n1")[-1]["result"] == "not drained"
