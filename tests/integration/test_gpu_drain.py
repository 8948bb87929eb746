"""GPU checks on a real Slurm: n1 replays a GPU with a pending row remap, n2 a healthy 8x H100.

A job submitted anywhere makes n1's prolog fail on gpu.remap: n1 is drained with a reason
naming the GPU, the job (requeued by Slurm) runs on n2, whose prolog and epilog pass the
whole gpu.* family. The cluster is put back (nodes resumed) at the end.
"""

from __future__ import annotations

from pathlib import Path

from nc_cluster import base_toml, events

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "nvml"


def gpu_toml(work: Path, n1_fixture: str, n2_fixture: str = "h100-healthy.json") -> str:
    def node_class(name: str, node: str, fixture: str) -> str:
        return f"""
[[node_class]]
name = "{name}"
match = ["{node}"]
nvml = "replay:{FIXTURES / fixture}"
[node_class.checks."gpu.count"]
expected = 8
[node_class.checks."gpu.model"]
name = "NVIDIA H100 80GB HBM3"
[node_class.checks."gpu.driver"]
driver_version = "550.90.07"
cuda_driver_version = "12.4"
[node_class.checks."gpu.nvlink"]
expected_active = 18
[node_class.checks."gpu.fabric"]
required = true
"""

    return (
        base_toml(work)
        + f"""
[checks."gpu.xid"]
kmsg = "{FIXTURES / "kmsg-h100-before.txt"}"
[checks."gpu.idle"]
settle_s = 0.5
{node_class("h100-bad", "n1", n1_fixture)}
{node_class("h100-good", "n2", n2_fixture)}
"""
    )


def verdicts(work: Path, phase: str) -> list[dict]:
    return events(work, "verdict", phase=phase)


def gpu_results(work: Path, node: str, phase: str, job: int) -> dict[str, set[str]]:
    """check id -> statuses logged for one node/phase/job."""
    out: dict[str, set[str]] = {}
    for e in events(work, "check_result", node=node, phase=phase, job=job):
        if e["check"].startswith("gpu."):
            out.setdefault(e["check"], set()).add(e["status"])
    return out


def test_pending_remap_drains_n1_and_the_job_runs_on_n2(clean_slurm_cluster, work):
    cluster = clean_slurm_cluster
    cluster.write_nodecheck_config(gpu_toml(work, "h100-remap-pending.json"))
    try:
        # Slurm gives a one-node job the first idle node, n1; its prolog drains it.
        job = cluster.sbatch("-N1", "--wrap", "echo on $SLURMD_NODENAME")
        cluster.wait_for(
            lambda: (
                cluster.node_state("n1")[0].startswith("drain")
                or cluster.job_state(job) == "COMPLETED"
            ),
            40,
            message="n1 drained or the job done",
        )
        if not cluster.node_state("n1")[0].startswith("drain"):
            # The scheduler happened to pick n2: send a job to n1 to run its prolog.
            pinned = cluster.sbatch("-w", "n1", "--wrap", "true")
            cluster.wait_for(
                lambda: cluster.node_state("n1")[0].startswith("drain"), 40, message="n1 drained"
            )
            cluster.run(["scancel", str(pinned)], check=False)
        _, reason = cluster.node_state("n1")
        # The prolog drains; the epilog Slurm runs after a failed prolog says the same.
        assert reason.startswith(
            "nodecheck: gpu.remap gpu3: row remap pending (needs GPU reset) ["
        ), reason
        assert f" job {job}" in reason
        # (the drain is logged before the verdict line: wait for it)
        cluster.wait_for(
            lambda: any(
                v["node"] == "n1" and v["status"] == "FAIL" for v in verdicts(work, "prolog")
            ),
            15,
            message="n1 prolog verdict",
        )
        assert cluster.node_state("n2")[0] in ("idle", "allocated", "mixed", "completing")

        # A prolog failure requeues the batch job held; once released it runs on n2.
        if cluster.job_state(job) != "COMPLETED":
            cluster.wait_for(lambda: cluster.job_state(job) == "PENDING", 30, message="requeued")
            cluster.scontrol("release", str(job), check=False)
            # A requeued job only becomes eligible after a delay (BeginTime); skip it.
            cluster.scontrol("update", f"JobId={job}", "StartTime=now", check=False)
            cluster.wait_for(
                lambda: cluster.job_state(job) == "COMPLETED", 40, message="job done on n2"
            )
        shown = cluster.scontrol("show", "job", str(job)).stdout
        assert "NodeList=n2" in shown, shown

        # n2 ran the whole gpu family in its prolog (and gpu.idle in the epilog), all PASS.
        cluster.wait_for(
            lambda: any(
                v["node"] == "n2" and v.get("job") == int(job) for v in verdicts(work, "epilog")
            ),
            20,
            message="n2 epilog verdict",
        )
        prolog = gpu_results(work, "n2", "prolog", job)
        assert "gpu.remap" in prolog and "gpu.count" in prolog and "gpu.xid" in prolog
        assert all(statuses == {"PASS"} for statuses in prolog.values()), prolog
        assert gpu_results(work, "n2", "epilog", job).get("gpu.idle") == {"PASS"}
        assert cluster.node_state("n2")[0] == "idle"
    finally:
        cluster.reset()  # resume n1, cancel whatever is left
    assert cluster.node_state("n1")[0] == "idle"
