"""Node lifecycle on a real Slurm: drain -> health passes -> resume, admin drains are sacred,
flapping nodes stay drained, `nodecheck report` lists exactly nodecheck's drains.

Each test starts its own cluster with the project's real Prolog/Epilog/HealthCheckProgram
(state_dir has {node}, so each slurmd on this host keeps its own history).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from nc_cluster import EPILOG, HEALTH, PROLOG, base_toml, events, nodecheck_cli
from prometheus_client.parser import text_string_to_metric_families

MISSING_MOUNT = "/nodecheck-test-missing-mount"


def toml(work: Path, broken: tuple[str, ...] = (), extra: str = "") -> str:
    text = base_toml(work, extra=extra)
    if broken:
        names = ", ".join(f'"{n}"' for n in broken)
        text += f"""
[[node_class]]
name = "broken"
match = [{names}]
[node_class.checks."host.mounts"]
required = ["{MISSING_MOUNT}"]
"""
    return text


def cluster_with_hooks(make_slurm_cluster, nodes: int):
    return make_slurm_cluster(
        nodes=nodes, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, health_interval=0
    )


def health(cluster, node: str) -> dict:
    """Run HealthCheckProgram by hand, exactly as slurmd does: no environment but the node."""
    out = subprocess.run(
        [str(cluster.health_wrapper)],
        env={"SLURMD_NODENAME": node},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Slurm ignores HealthCheckProgram's exit code; a FAIL exits 1 like the prolog would.
    assert out.returncode in (0, 1), out.stderr[-2000:]
    verdict = [json.loads(x) for x in out.stderr.splitlines() if x.startswith('{"')]
    return next(e for e in reversed(verdict) if e["event"] == "verdict")


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
