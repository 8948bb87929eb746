"""Report-only on a real Slurm (issue 29): n1 replays a GB200 tray whose gpu3 registered in
another clique than the tray's other GPUs (tests/fixtures/nvml/gb200-clique-split.json).

A signal new to the platform (gpu.fabric's `nvl_domain`) only reports: n1's prolog logs the
WARN, the job runs, nothing is drained, the metrics file counts the held-back FAIL. Once the
site enables the check (`report_only = false`), the same tray is drained with the GPU named.
"""

from __future__ import annotations

import re
from pathlib import Path

from nc_cluster import base_toml, events

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "nvml"
MESSAGE = "NVLink clique 4027 (the node's other GPUs: clique 4026)"


def nvl72_toml(work: Path, fabric: str = "") -> str:
    return (
        base_toml(work)
        + f"""
[checks."gpu.xid"]
kmsg = "{FIXTURES / "kmsg-h100-before.txt"}"
[[node_class]]
name = "nvl72"
match = ["n1"]
nvml = "replay:{FIXTURES / "gb200-clique-split.json"}"
[node_class.checks."gpu.fabric"]
imex = "off"
{fabric}
"""
    )


def test_a_new_signal_reports_on_a_real_cluster_until_the_site_enables_it(
    clean_slurm_cluster, work
):
    cluster = clean_slurm_cluster
    cluster.write_nodecheck_config(nvl72_toml(work))
    try:
        job = cluster.sbatch("-w", "n1", "--wrap", "true")
        cluster.wait_for(lambda: cluster.job_state(job) == "COMPLETED", 40, message="job ran")
        assert cluster.node_state("n1")[0] in ("idle", "completing"), cluster.node_state("n1")
        [held] = [
            e
            for e in events(work, "check_result", node="n1", phase="prolog", job=job)
            if e["check"] == "gpu.fabric" and e["component"] == "gpu3"
        ]
        assert (held["status"], held["message"]) == ("WARN", f"report-only: {MESSAGE}")
        metrics = (work / "metrics" / "n1.prom").read_text()
        assert re.search(
            r'nodecheck_check_report_only\{check="gpu.fabric",node="n1"\} 1\.0', metrics
        )

        cluster.write_nodecheck_config(nvl72_toml(work, "report_only = false"))
        pinned = cluster.sbatch("-w", "n1", "--wrap", "true")
        cluster.wait_for(
            lambda: cluster.node_state("n1")[0].startswith("drain"), 40, message="n1 drained"
        )
        reason = cluster.node_state("n1")[1]
        # A failed prolog requeues the batch job (held); it is cancelled once it is back.
        cluster.wait_for(lambda: cluster.job_state(pinned) == "PENDING", 40, message="requeued")
        cluster.run(["scancel", str(pinned)], check=False)
        assert reason.startswith(f"nodecheck: gpu.fabric gpu3: {MESSAGE} [prolog job"), reason
    finally:
        cluster.reset()
    assert cluster.node_state("n1")[0] == "idle"
