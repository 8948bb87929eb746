"""A degradation trend on a real Slurm (with slurmdbd): the health run finds an IB port's
symbol errors over their trend limit while a job runs on the node; the node goes DRAINING
with the job still running, the job ends, the node is DRAINED with the trend's reason; and
`nodecheck report --lemons` (slurmdbd: sacctmgr events, sacct jobs) ranks it with the job
that ended FAILED on it during the drain.

The node's HCA is a fake sysfs tree with the kernel's real files (tests/fixtures/sysfs.py);
the hours of readings before the job are written into the node's own series store (the
real SQLite state file), at IBTA's BER limit for an NDR port: 1440 symbol errors per hour.
Cost: one 2-node cluster with slurmdbd and its MariaDB, a 6 s job, one health run.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from nc_cluster import EPILOG, HEALTH, PROLOG, base_toml, health, nodecheck_cli

from nodecheck.checks.trend.common import boot_id
from nodecheck.store.series import Reading, append, ensure_schema
from nodecheck.store.transaction import locked_update
from tests.fixtures.sysfs import healthy_node

PER_HOUR = 1440  # 400e9 bit/s x 1e-12 x 3600 s


def config(work: Path, sys_root: Path) -> str:
    return (
        base_toml(work)
        + f"""
[[node_class]]
name = "degrading"
match = ["n1"]
sysfs_root = "{sys_root}"
[node_class.checks."trend.ib_counters"]
enabled = true
phases = ["health", "manual"]
[node_class.checks."ib.counters"]
enabled = false
"""
    )


def seed(state_dir: Path, guid: str, now: float) -> int:
    """Five hours of the port's readings, one an hour, rising at PER_HOUR."""
    boot = boot_id(_ctx())
    with locked_update(state_dir) as store:
        ensure_schema(store.conn)
        for hour in range(5):
            at = now - (5 - hour) * 3600
            append(
                store.conn, "ib.symbol_error", "mlx5_0/1", Reading(at, hour * PER_HOUR, boot, guid)
            )
    return 5 * PER_HOUR


def _ctx():
    from nodecheck.checks.context import CheckContext, JobInfo, NodeSettings

    return CheckContext("health", "n1", "degrading", JobInfo(), NodeSettings())


def test_a_trend_drains_the_node_after_its_job_not_during_it(make_slurm_cluster, work):
    fake = healthy_node(work / "sys", hcas=1)
    guid = (fake.root / "class/infiniband/mlx5_0/node_guid").read_text().strip()
    cluster = make_slurm_cluster(
        nodes=2, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, health_interval=0,
        accounting=True,
    )  # fmt: skip
    cluster.write_nodecheck_config(config(work, fake.root))
    value = seed(work / "state" / "n1", guid, time.time())
    fake.set_counter("mlx5_0", 1, "symbol_error", value)

    job = cluster.sbatch("-w", "n1", "--wrap", "sleep 6; exit 1")
    cluster.wait_for(lambda: cluster.job_state(job) == "RUNNING", 30, message="job running")
    verdict = health(cluster, "n1")
    assert verdict["status"] == "FAIL", verdict

    state, reason = cluster.node_state("n1")
    assert cluster.job_state(job) == "RUNNING"  # the trend never kills the running job
    assert state in ("draining", "drng"), state
    assert reason.startswith("nodecheck: trend ib.counters mlx5_0/1: symbol_error "), reason
    assert reason.endswith("[health sev=medium act=validate]"), reason

    cluster.wait_for(lambda: cluster.job_state(job) == "FAILED", 30, message="job ended")
    cluster.wait_for(lambda: cluster.node_state("n1")[0] == "drained", 30, message="drained")
    assert cluster.node_state("n1")[1] == reason

    def lemons():
        out = nodecheck_cli(cluster, "report", "--lemons", "--json", "--days", "1")
        assert out.returncode == 0, out.stderr
        rows = {r["node"]: r for r in json.loads(out.stdout)["nodes"]}
        row = rows.get("n1")
        return row if row and row["drains"] and row["jobs_before_drain"] else None

    row = cluster.wait_for(lemons, 30, message="slurmdbd has the drain and the job")
    assert row["trend_drains"] == 1 and row["checks"] == ["trend.ib_counters"]
    assert [j["job_id"] for j in row["jobs_before_drain"]] == [str(job)]
    assert row["jobs_before_drain"][0]["state"] == "FAILED"
    assert "n2" not in {
        r["node"]
        for r in json.loads(
            nodecheck_cli(cluster, "report", "--lemons", "--json", "--days", "1").stdout
        )["nodes"]
    }
    table = nodecheck_cli(cluster, "report", "--lemons", "--days", "1")
    assert table.returncode == 0 and table.stdout.splitlines()[1].split()[:3] == ["n1", "1", "1"]
    print("lemons:\n" + table.stdout + "\nreason: " + reason)
    # The reader's own sacct call, as the report made it: the job, FAILED, on n1.
    from nodecheck.slurm.dbd import job_args, parse_jobs

    args = job_args("sacct", start=time.time() - 3600, end=time.time() + 60)
    out = subprocess.run(args, env=cluster.env, capture_output=True, text=True, check=True)
    print("sacct:", args, repr(out.stdout))
    (found,) = [j for j in parse_jobs(out.stdout) if j.job_id == str(job)]
    assert found.state == "FAILED" and found.nodelist == "n1" and found.elapsed_s >= 5
