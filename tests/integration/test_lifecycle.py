"""Node lifecycle on a real Slurm: drain -> health passes -> resume, admin drains are sacred,
flapping nodes stay drained, `nodecheck report` lists exactly nodecheck's drains.

Each test starts its own cluster with the project's real Prolog/Epilog/HealthCheckProgram
(state_dir has {node}, so each slurmd on this host keeps its own history).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from nc_cluster import (
    EPILOG,
    HEALTH,
    MISSING_MOUNT,
    PROLOG,
    base_toml,
    broken_mount_class,
    events,
    health,
    nodecheck_cli,
)
from prometheus_client.parser import text_string_to_metric_families


def toml(work: Path, broken: tuple[str, ...] = (), extra: str = "") -> str:
    return base_toml(work, extra=extra) + (broken_mount_class(broken) if broken else "")


def cluster_with_hooks(make_slurm_cluster, nodes: int):
    return make_slurm_cluster(
        nodes=nodes, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, health_interval=0
    )


def drained(cluster, node: str) -> bool:
    return cluster.node_state(node)[0].startswith("drain")


def metric(work: Path, node: str, name: str) -> float:
    text = (work / "metrics" / f"{node}.prom").read_text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("node") == node:
                return sample.value
    raise KeyError(name)


def test_prolog_drain_comes_back_by_itself_through_health_check_program(make_slurm_cluster, work):
    cluster = cluster_with_hooks(make_slurm_cluster, nodes=2)
    cluster.write_nodecheck_config(toml(work, broken=("n1",), extra="resume_after_passes = 2"))
    job = cluster.sbatch("-w", "n1", "--wrap", "true")
    cluster.wait_for(lambda: drained(cluster, "n1"), 30, message="n1 drained by the prolog")
    reason = cluster.node_state("n1")[1]
    assert reason.startswith(
        f"nodecheck: host.mounts {MISSING_MOUNT}: not mounted [prolog job {job}"
    )
    cluster.run(["scancel", str(job)], check=False)

    # The admin fixes the mount; from now on slurmd runs HealthCheckProgram by itself.
    cluster.write_nodecheck_config(toml(work, extra="resume_after_passes = 2"))
    cluster.health_interval = 2
    cluster.write_files()
    cluster.reconfigure()
    cluster.wait_for(lambda: not drained(cluster, "n1"), 90, message="n1 resumed by nodecheck")
    # The health run logs its resume after the controller call: wait for the line too.
    [resume] = cluster.wait_for(
        lambda: events(work, "resume", node="n1"), 30, message="the resume log line"
    )
    assert resume["result"] == "resumed" and resume["passes"] == 2
    # ... and its record (the metrics file is written last): a reconfigure while the health
    # run is still recording stops it there, and the resume goes uncounted.
    cluster.wait_for(
        lambda: metric(work, "n1", "nodecheck_resumes_total") == 1, 30, message="resume recorded"
    )
    pending = [e for e in events(work, "verdict", node="n1") if e["phase"] == "health"]
    assert any(e["action"] == "passed 1/2 before resume" for e in pending)
    assert not events(work, "drain", node="n2") and not drained(cluster, "n2")
    cluster.reconfigure()
    cluster.wait_for(lambda: cluster.node_state("n1")[0] == "idle", 30, message="n1 idle")
    again = cluster.sbatch("-w", "n1", "--wrap", "true")
    cluster.wait_for(lambda: cluster.job_state(again) == "COMPLETED", 30, message="job on n1")
    assert metric(work, "n1", "nodecheck_drains_total") == 1
    assert metric(work, "n1", "nodecheck_resumes_total") == 1
    assert metric(work, "n1", "nodecheck_drained") == 0


def test_admin_drain_stays_and_report_lists_only_nodecheck_drains(make_slurm_cluster, work):
    cluster = cluster_with_hooks(make_slurm_cluster, nodes=4)
    cluster.write_nodecheck_config(toml(work, broken=("n1", "n2", "n3")))
    cluster.drain("n2", "replacing PSU, do not touch")
    assert health(cluster, "n1")["status"] == "FAIL"
    assert health(cluster, "n3")["status"] == "FAIL"
    kept = health(cluster, "n2")  # fails too, but the admin's drain wins
    assert kept["action"] == "admin drain kept"
    assert cluster.node_state("n2") == ("drained", "replacing PSU, do not touch")
    assert health(cluster, "n4")["action"] == "none"

    report = nodecheck_cli(cluster, "report", "--json")
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    assert [n["node"] for n in doc["nodes"]] == ["n1", "n3"]
    for row in doc["nodes"]:
        assert (row["check"], row["component"]) == ("host.mounts", MISSING_MOUNT)
        assert row["since"] and row["drains_in_window"] == 1
        assert row["drains_source"] == "history" and not row["flapping"]
    text = nodecheck_cli(cluster, "report")
    listed = [line.split()[0] for line in text.stdout.splitlines()[1:-1]]
    assert listed == ["n1", "n3"]
    assert "2 node(s) drained by nodecheck" in text.stdout

    # Everything healthy again: ours come back, the admin's stays.
    cluster.write_nodecheck_config(toml(work))
    for node in ("n1", "n2", "n3", "n4"):
        health(cluster, node)
    assert not drained(cluster, "n1") and not drained(cluster, "n3")
    assert cluster.node_state("n2") == ("drained", "replacing PSU, do not touch")
    assert json.loads(nodecheck_cli(cluster, "report", "--json").stdout)["count"] == 0


def test_a_flapping_node_stays_drained_with_a_flapping_reason(make_slurm_cluster, work):
    cluster = cluster_with_hooks(make_slurm_cluster, nodes=2)
    settings = "flap_max_drains = 2\nflap_window_s = 3600"
    broken, fixed = toml(work, ("n1",), settings), toml(work, extra=settings)
    for round_ in (1, 2):
        cluster.write_nodecheck_config(broken)
        assert health(cluster, "n1")["status"] == "FAIL"
        assert drained(cluster, "n1"), round_
        cluster.write_nodecheck_config(fixed)
        assert health(cluster, "n1")["action"] == "resumed"
        assert not drained(cluster, "n1")
    cluster.write_nodecheck_config(broken)
    assert health(cluster, "n1")["action"] == "drained (flapping)"
    state, reason = cluster.node_state("n1")
    assert state.startswith("drain")
    assert reason.startswith(
        f"nodecheck: host.mounts {MISSING_MOUNT}: flapping (drained 3x in 1h) not mounted [health"
    )
    cluster.write_nodecheck_config(fixed)
    for _ in range(3):
        assert health(cluster, "n1")["action"] == "held: flapping"
        time.sleep(0.2)
    assert drained(cluster, "n1") and cluster.node_state("n1")[1] == reason
    [row] = json.loads(nodecheck_cli(cluster, "report", "--json").stdout)["nodes"]
    assert row["node"] == "n1" and row["flapping"] and row["drains_in_window"] == 3
    assert metric(work, "n1", "nodecheck_flap_holds_total") == 1
    assert metric(work, "n1", "nodecheck_drained") == 1
    # An admin who has dealt with it resumes by hand; nodecheck lets go of the hold.
    cluster.resume("n1")
    assert health(cluster, "n1")["action"] == "not drained"
    assert health(cluster, "n1")["action"] == "none"


def test_an_admin_edited_reason_is_never_resumed(make_slurm_cluster, work):
    """Ownership is the exact reason nodecheck set (kept in its drain marker), not the prefix:
    an admin who appends to it takes the drain over (issue 13.5)."""
    cluster = cluster_with_hooks(make_slurm_cluster, nodes=1)
    cluster.write_nodecheck_config(toml(work, broken=("n1",)))
    assert health(cluster, "n1")["action"] == "drained"
    ours = cluster.node_state("n1")[1]
    assert ours.startswith(f"nodecheck: host.mounts {MISSING_MOUNT}: not mounted [health")
    edited = f"{ours} -- RMA 44 KEEP DRAINED"
    cluster.drain("n1", edited)
    cluster.write_nodecheck_config(toml(work))  # the node passes again
    assert health(cluster, "n1")["action"] == "refused: drained by someone else"
    for _ in range(2):
        assert health(cluster, "n1")["action"] == "none"
    assert cluster.node_state("n1") == ("drained", edited)
    assert not events(work, "resume", result="resumed")


def test_controller_down_during_a_failing_prolog_the_next_run_adopts_slurms_drain(
    make_slurm_cluster, work
):
    """slurmctld stopped (by its pid) while a failing prolog runs: nodecheck cannot set its
    reason and exits 1; Slurm drains with "Prolog error" when the controller is back. The
    next health run recognises that drain as its own recorded failure, sets the real
    reason, and from then on owns it: the node comes back once it passes (issue 13.3)."""
    proc = work / "proc"
    proc.mkdir()
    os.mkfifo(proc / "meminfo")  # host.mem's read blocks: the prolog runs ~4 s, then FAILs
    slow = f'procfs_root = "{proc}"\n[checks."host.mem"]\ntimeout_s = 4\n'
    slow += '[checks."host.services"]\nenabled = false\n'
    cluster = cluster_with_hooks(make_slurm_cluster, nodes=1)
    cluster.write_nodecheck_config(toml(work, extra=slow))
    job = cluster.sbatch("-w", "n1", "--wrap", "true")
    cluster.wait_for(lambda: cluster.job_state(job) not in ("", "PENDING"), 20, message="start")
    cluster._signal_and_wait(["slurmctld"], 15)  # by the pid the cluster recorded
    assert not cluster._alive("slurmctld")
    [verdict] = cluster.wait_for(
        lambda: events(work, "verdict", phase="prolog", job=job), 40, message="prolog verdict"
    )
    assert verdict["action"] == "drain failed" and verdict["exit_code"] == 1
    # (which check leads the reason when a probe hangs is issue 13.6's, not this test's)
    assert verdict["reason"].startswith("nodecheck: host.m") and "host.mem" in verdict["reason"]
    cluster._start_slurmctld()
    cluster._wait(cluster._ctld_responds, 20, "slurmctld did not answer", watch=["slurmctld"])
    cluster.wait_for(
        lambda: cluster.node_state("n1")[1].startswith("Prolog error"), 60, message="Slurm drain"
    )
    adopted = health(cluster, "n1")  # host.mem still hangs: the failure persists
    assert adopted["action"] == "adopted drained", adopted
    [note] = events(work, "slurm_drain_adopted", node="n1")
    assert note["slurm_reason"].startswith("Prolog error")
    state, reason = cluster.node_state("n1")
    assert state.startswith("drain") and reason.startswith("nodecheck: host.m")
    assert "host.mem" in reason and "[health" in reason
    # Fixed: the drain is nodecheck's now, so it ends by itself.
    cluster.write_nodecheck_config(toml(work))
    assert health(cluster, "n1")["action"] == "resumed"
    assert not cluster.node_state("n1")[0].startswith("drain")
    cluster.run(["scancel", str(job)], check=False)
