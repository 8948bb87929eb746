"""The class median's reader on a real Slurm with slurmdbd (checks/trend/class_median.py,
slurm/dbd.py `read_validation_comments`).

Jobs named as the loop names its validation jobs are submitted held as root, given an
AdminComment with published figures through nodecheck's own `scontrol update` (SlurmJobs.
note_on_job: what validate-job does), released, and run to their end; then one `sacct`
(slurmdbd, never slurmctld) must hand back, per node, the newest passed one, and the class
filter must keep this node's class without this node. Around them: an older validation of
the same node, a newer one that failed (exit 1: not COMPLETED), a job of another name with
figures, and a node of another class.
Cost: one 4-node cluster with slurmdbd and its MariaDB, seven 1 s jobs.
"""

from __future__ import annotations

import time
from pathlib import Path

from nc_cluster import base_toml

from nodecheck.checks.registry import all_checks
from nodecheck.checks.trend.class_median import class_figures, parse_figures, publish
from nodecheck.quarantine.loop import JOB_NAME
from nodecheck.run.config import load_config
from nodecheck.slurm.dbd import read_validation_comments
from nodecheck.slurm.jobs import SlurmJobs
from nodecheck.slurm.scontrol import ScontrolBackend

GEMM = "deep.gemm:bf16 GEMM"
MEMBW = "deep.membw:memory copy"


def config(work: Path) -> str:
    return (
        base_toml(work)
        + """
[[node_class]]
name = "h100"
match = ["n1", "n2", "n3"]
[[node_class]]
name = "a100"
match = ["n4"]
"""
    )


def test_sacct_gives_the_newest_passed_figures_per_node_of_the_class(make_slurm_cluster, work):
    cluster = make_slurm_cluster(nodes=4, accounting=True)
    cluster.write_nodecheck_config(config(work))
    jobs = SlurmJobs(ScontrolBackend(str(cluster.bin / "scontrol"), str(cluster.conf_path)))
    start = time.time() - 60

    def validation(node: str, gemm: float, *, code: int = 0, name: str = JOB_NAME) -> int:
        job = cluster.sbatch("-H", "-w", node, "-J", name, "-o", "/dev/null",
                             "--wrap", f"sleep 1; exit {code}")  # fmt: skip
        jobs.note_on_job(job, publish({GEMM: gemm, MEMBW: gemm * 4}))
        cluster.scontrol("release", str(job))
        done = ("COMPLETED", "FAILED")
        cluster.wait_for(lambda: cluster.job_state(job) in done, 30, message=f"job {job} ended")
        return job

    validation("n1", 600.0)  # older: replaced by the next
    validation("n1", 700.0)
    validation("n2", 710.0)
    validation("n2", 100.0, code=1)  # newer, but failed: not a passed validation
    validation("n2", 1.0, name="not-a-validation")
    validation("n3", 50.0)  # this node: never its own reference
    validation("n4", 300.0)  # another class

    def read() -> dict[str, float] | None:
        got = read_validation_comments(str(cluster.bin / "sacct"), str(cluster.conf_path),
                                       JOB_NAME, start=start, end=time.time() + 60)  # fmt: skip
        found = {c.node: parse_figures(c.comment).get(GEMM, 0.0) for c in got}
        return found if len(found) == 4 and found["n1"] == 700.0 else None

    seen = cluster.wait_for(read, 60, interval=1.0, message="slurmdbd has the four nodes' jobs")
    assert seen == {"n1": 700.0, "n2": 710.0, "n3": 50.0, "n4": 300.0}

    cfg = load_config(str(cluster.nodecheck_config), {}, all_checks())
    registry = all_checks()
    mine = cfg.for_node("n3", registry).node_class
    got = read_validation_comments(str(cluster.bin / "sacct"), str(cluster.conf_path), JOB_NAME,
                                   start=start, end=time.time() + 60)  # fmt: skip
    published = class_figures(
        [(c.node, c.end, c.comment) for c in got], "n3",
        lambda n: cfg.for_node(n, registry).node_class == mine,
    )  # fmt: skip
    assert mine == "h100"
    assert [(p.node, p.figures[GEMM], p.figures[MEMBW]) for p in published] == [
        ("n1", 700.0, 2800.0),
        ("n2", 710.0, 2840.0),
    ]
