"""Fabric checks on a real Slurm: each fake node reads its own sysfs tree (node class
`sysfs_root`), the project's real prolog/epilog drain the node whose fabric is broken.

The session cluster (n1, n2) is left as found: jobs cancelled, nodes we drained resumed,
nodecheck.toml restored.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from nc_cluster import base_toml, events, wait_drained

from tests.fixtures.sysfs import healthy_node

NDR = "400 Gb/sec (4X NDR)"


def fabric_toml(work: Path, good: Path, extra: str = "") -> str:
    return base_toml(
        work,
        extra=f"""
sysfs_root = "{good}"
[checks."ib.port"]
ports = ["mlx5_0/1", "mlx5_1/1"]
rate = "{NDR}"
link_layer = "InfiniBand"
{extra}
""",
    )


def results_of(work: Path, check: str, node: str, phase: str, job: int) -> list[dict]:
    return events(work, "check_result", check=check, node=node, phase=phase, job=job)


@pytest.fixture
def cluster(slurm_cluster, tmp_path):
    """The session cluster, clean; afterwards its config restored and our drains resumed."""
    cluster = slurm_cluster
    cluster.reset()
    config = Path(cluster.nodecheck_config)
    before = config.read_text() if config.exists() else None
    try:
        yield cluster
    finally:
        # Config first: the epilog of a cancelled job still runs and must not drain again.
        if before is None:
            config.unlink(missing_ok=True)
        else:
            cluster.write_nodecheck_config(before)

        def no_jobs_left() -> bool:
            # A job cancelled while its prolog still runs comes back when that prolog fails
            # (Slurm requeues it, held): cancel until the queue stays empty.
            if not cluster.run(["squeue", "-h"], check=False).stdout.strip():
                return True
            cluster.run(["scancel", "--full", f"--partition={cluster.partition}"], check=False)
            return False

        cluster.wait_for(no_jobs_left, 30, interval=0.5, message="no jobs left")
        for node in ("n1", "n2"):
            state, reason = cluster.node_state(node)
            if state.startswith("drain") and reason.startswith("nodecheck: "):
                cluster.resume(node)
        cluster.wait_all_idle(30)


def test_port_down_drains_n1_with_device_and_port_and_n2_runs_the_job(cluster, work):
    good = healthy_node(work / "sys-good", hcas=2).root
    bad = healthy_node(work / "sys-n1", hcas=2)
    bad.set_port("mlx5_0", 1, state=1, phys_state=2)  # cable pulled: DOWN / Polling
    extra = f"""
[[node_class]]
name = "bad-fabric"
match = ["n1"]
sysfs_root = "{bad.root}"
"""
    cluster.write_nodecheck_config(fabric_toml(work, good, extra))

    pinned = cluster.sbatch("-w", "n1", "--wrap", "true")
    reason = wait_drained(cluster, "n1", 30)
    assert reason.startswith(
        "nodecheck: ib.port mlx5_0/1: state 1: DOWN, phys_state 2: Polling "
        "(expected 4: ACTIVE, 5: LinkUp) [prolog job "
    ), reason
    assert f"[prolog job {pinned} " in reason
    assert cluster.node_state("n2")[0] == "idle"
    cluster.run(["scancel", str(pinned)], check=False)

    job = cluster.sbatch("--wrap", "true")
    cluster.wait_for(lambda: cluster.job_state(job) == "COMPLETED", 30, message="job on n2")
    assert "NodeList=n2" in cluster.scontrol("show", "job", str(job)).stdout
    cluster.wait_for(lambda: results_of(work, "ib.port", "n2", "epilog", job), 15)
    on_n2 = results_of(work, "ib.port", "n2", "prolog", job)
    assert sorted(r["component"] for r in on_n2) == ["mlx5_0/1", "mlx5_1/1"]
    assert all(r["status"] == "PASS" for r in on_n2), on_n2
    assert cluster.node_state("n2")[0] == "idle"


def test_link_errors_during_a_job_drain_the_node_in_the_epilog(cluster, work):
    good = healthy_node(work / "sys-good", hcas=2).root
    n2 = healthy_node(work / "sys-n2", hcas=2)
    extra = f"""
[[node_class]]
name = "n2-tree"
match = ["n2"]
sysfs_root = "{n2.root}"
"""
    cluster.write_nodecheck_config(fabric_toml(work, good, extra))
    counter = n2.counter_path("mlx5_1", 1, "link_downed")
    # The job itself makes the link flap three times (the fake tree is a plain file).
    job = cluster.sbatch("-w", "n2", "--wrap", f"echo 3 > {counter}")
    reason = wait_drained(cluster, "n2", 40)
    assert reason.startswith(
        f"nodecheck: ib.counters mlx5_1/1: link_downed +3 during job {job} [epilog job {job}"
    ), reason
    # The drain is set from inside the epilog, so the job may still be COMPLETING.
    cluster.wait_for(lambda: cluster.job_state(job) == "COMPLETED", 30, message="job done")
    [prolog] = [
        r
        for r in results_of(work, "ib.counters", "n2", "prolog", job)
        if r["component"] == "mlx5_1/1"
    ]
    assert prolog["status"] == "PASS"
    assert cluster.node_state("n1")[0] == "idle"


def test_peer_probe_in_a_two_node_job(cluster, work):
    good = healthy_node(work / "sys-good", hcas=2).root
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Both slurmd run on this host; loopback addresses stand in for the fabric.
    extra = f"""
[checks."fabric.peers"]
enabled = true
address_template = "127.0.0.{{num}}"
port = {port}
deadline_s = 3
"""
    cluster.write_nodecheck_config(fabric_toml(work, good, extra))
    job = cluster.sbatch("-N", "2", "--wrap", "true")
    cluster.wait_for(lambda: cluster.job_state(job) == "COMPLETED", 40, message="2-node job")
    for node, peer in (("n1", "n2"), ("n2", "n1")):
        [result] = cluster.wait_for(
            lambda node=node: results_of(work, "fabric.peers", node, "prolog", job), 15
        )
        assert result["status"] == "PASS", result
        assert result["message"].startswith("reached 1 of 1 peers")
        assert result["values"]["peers"][peer] in ("ok", "inbound", "refused", "answered")
        assert result["duration_s"] < 3.5
    assert cluster.node_states() == {"n1": "idle", "n2": "idle"}
