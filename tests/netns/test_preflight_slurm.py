"""fabric.preflight under a real Slurm, one slurmd per network-namespace host.

tests/netns/lab.py builds the hosts (fabric bridge 10.201.0.0/24, control bridge
10.202.0.0/24) and a veth from the root namespace into the control bridge, where slurmctld is
announced; tools/testcluster_netns.py starts munged and slurmctld here and each `slurmd -N nX`
in host X's namespace (NodeAddr = its control address), with `PrologFlags=Alloc` and the
project's real prolog and epilog. The preflight's key is the cluster's own munge key.

Asserted from Slurm's own view (sinfo, scontrol show job): the slow host is drained with
nodecheck's reason naming its figure, the others are not, and the job, requeued by Slurm
(`nohold_on_prolog_fail`), runs to completion on healthy nodes; a host whose fabric link is
cut never joins: every prolog WARNs, nobody is drained, the job runs.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab import SKIP, Lab

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "tests" / "integration"))
import testcluster  # noqa: E402
from nc_cluster import EPILOG, PROLOG, base_toml, events, wait_drained  # noqa: E402
from testcluster_netns import NetnsCluster  # noqa: E402

pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
SCHED = "batch_sched_delay=0,sched_interval=1,nohold_on_prolog_fail"


@pytest.fixture
def slurm_lab(lab, tmp_path_factory) -> Iterator:
    """make(hosts, toml_extra) -> (lab, cluster, work); everything stopped afterwards."""
    missing = testcluster.missing_binaries("/usr/sbin", "/usr/bin")
    if missing:
        if os.environ.get("NODECHECK_REQUIRE_SLURM", "") == "1":
            pytest.fail(f"Slurm/munge binaries missing: {missing}", pytrace=False)
        pytest.skip(f"Slurm/munge binaries missing: {missing}")
    clusters: list[NetnsCluster] = []

    def make(hosts: int, **options: object) -> tuple[Lab, NetnsCluster, Path]:
        net = lab(hosts)
        ctld = net.connect_root()
        work = tmp_path_factory.mktemp("preflight")
        work.chmod(0o755)
        state = tmp_path_factory.mktemp("slurm")
        cluster = NetnsCluster(
            state,
            hosts={f"n{i}": (net.hosts[f"h{i}"], f"10.202.0.{i}") for i in range(1, hosts + 1)},
            ctld_addr=ctld,
            prolog=PROLOG,
            epilog=EPILOG,
            conf_overrides={"SchedulerParameters": SCHED, "PrologFlags": "Alloc,DeferBatch"},
        )
        opts = {"join_s": 2, "measure_s": 5, **options}
        extra = "\n".join(f"{k} = {v!r}" for k, v in opts.items())
        cluster.nodecheck_config_text = base_toml(
            work,
            extra=f"""
[checks."fabric.preflight"]
enabled = true
address_template = "10.201.0.{{num}}"
key_file = "{state}/munge/munge.key"
{extra}
""",
        )
        clusters.append(cluster)
        cluster.start()
        return net, cluster, work

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop()


def preflight_results(work: Path, job: int) -> dict[str, dict]:
    got = events(work, "check_result", check="fabric.preflight", phase="prolog", job=job)
    return {e["node"]: e for e in got}


def test_slow_host_is_drained_and_the_job_runs_on_healthy_nodes(slurm_lab):
    net, cluster, work = slurm_lab(4)
    net.limit("h2", "8mbit")
    job = cluster.sbatch("-N", "3", "-o", "/dev/null", "--wrap", "true")
    reason = wait_drained(cluster, "n2", 40)
    assert re.match(
        r"nodecheck: fabric\.preflight 10\.201\.0\.2: slow fabric: [\d.]+ [kM]B/s with n\d "
        r"\(cleared\), allocation's healthy pair [\d.]+ [MG]B/s \(below 25%\) "
        rf"\[prolog job {job} sev=high act=check-cable\]",
        reason,
    ), reason
    # Requeued, not held (nohold_on_prolog_fail): pending until Slurm's requeue delay ends
    # (EligibleTime two minutes on, measured on 22.05). That is what the user sees; the
    # test moves the start time up instead of waiting it out.
    pending = cluster.wait_for(
        lambda: (
            "JobState=PENDING" in (out := cluster.scontrol("show", "job", str(job)).stdout) and out
        ),
        30,
        message="job requeued",
    )
    assert "Reason=BeginTime" in pending and "Restarts=1" in pending, pending
    # Only once the first attempt has ended everywhere (its epilogs done, every healthy node
    # idle again): a rerun dispatched onto a node still completing the first one made
    # 22.05's slurmd wait for a prolog notification that never came and drain the node
    # ("Prolog or job env setup failure"). Slurm's own two-minute delay gives the same.
    cluster.wait_for(
        lambda: all(cluster.node_states().get(n) == "idle" for n in ("n1", "n3", "n4")),
        30,
        message="the first attempt ended on every healthy node",
    )
    time.sleep(5)  # and slurmd done with the first attempt's batch step (not in sinfo)
    cluster.scontrol("update", f"JobId={job}", "StartTime=now")
    cluster.wait_for(lambda: cluster.job_state(job) == "COMPLETED", 30, message="job rerun")
    shown = cluster.scontrol("show", "job", str(job)).stdout
    assert "NodeList=n[1,3-4]" in shown, shown
    assert "Restarts=1" in shown, shown
    states = cluster.node_states()
    assert states["n2"] == "drained", states
    assert all(states[n] == "idle" for n in ("n1", "n3", "n4")), states
    first = preflight_results(work, job)
    # both runs of the job logged under its id: the last result per node is the rerun's
    assert first["n2"]["status"] == "FAIL", first
    assert first["n4"]["status"] == "PASS" and first["n3"]["status"] == "PASS", first


def test_a_host_that_never_joins_warns_everyone_and_drains_nobody(slurm_lab):
    net, cluster, work = slurm_lab(3)
    net.cut("h3")  # n3's fabric link is dead: its prolog runs, it never reaches n1
    job = cluster.sbatch("-N", "3", "-o", "/dev/null", "--wrap", "true")
    cluster.wait_for(lambda: cluster.job_state(job) == "COMPLETED", 40, message="job done")
    got = cluster.wait_for(
        lambda: len(r := preflight_results(work, job)) == 3 and r, 15, message="3 results"
    )
    for node in ("n1", "n2"):
        assert got[node]["status"] == "WARN", got[node]
        assert got[node]["message"] == "preflight incomplete: n3 never joined (2 of 3 nodes)"
    assert got["n3"]["status"] == "WARN"
    assert got["n3"]["message"].startswith("preflight incomplete: coordinator n1 not reached")
    assert cluster.node_states() == {"n1": "idle", "n2": "idle", "n3": "idle"}
