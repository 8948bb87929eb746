"""`nodecheck report --lemons`: the sacct job reader (dbd.parse_jobs, on real sacct output)
and the ranking (lemons.rank), pure: events and jobs in, rows out. The real-cluster run is
tests/integration/test_trend_drain.py."""

from __future__ import annotations

from pathlib import Path

from nodecheck.entry.lemons import rank, render_prom, render_table
from nodecheck.slurm.dbd import JobRecord, NodeEvent, job_args, parse_jobs

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "slurm"
H = 3600.0
NOW = 1_790_000_000.0
SINCE = NOW - 7 * 86400
TREND = (
    "nodecheck: trend gpu.ecc gpu3: correctable ECC 480/h, x4 in 24 h"
    " [health sev=medium act=validate]"
)
XID = "nodecheck: gpu.xid gpu1: Xid 79: GPU has fallen off the bus [epilog job 77 sev=critical act=reboot]"  # noqa: E501
ADMIN = "RMA 4411 -- keep drained (jdoe)"


def real_sacct() -> str:
    text = (REAL / "sacct-failed-jobs-22.05.txt").read_text()
    return "".join(line for line in text.splitlines(True) if not line.startswith("#"))


def event(node: str, start: float, end: float | None, reason: str) -> NodeEvent:
    return NodeEvent("c", node, start, end, "DRAIN", 0, "root(0)", reason)


def job(job_id: str, nodes: str, end: float, gpus: int = 8, nnodes: int = 1, state="FAILED"):
    return JobRecord(job_id, "alice", state, end - 4 * H, end, int(4 * H), nnodes, nodes, gpus)


def test_real_sacct_output_parses():
    (got,) = parse_jobs(real_sacct())
    assert (got.job_id, got.user, got.state, got.nodelist) == ("1", "root", "FAILED", "n1")
    assert got.elapsed_s == 7 and got.nnodes == 1 and got.gpus == 0


def test_gpus_from_alloc_tres_in_slurms_documented_form():
    """AllocTRES as Slurm prints it with GPUs (gres/gpu and the typed gres/gpu:<type> of
    the same GPUs, Slurm's TRES docs): counted once."""
    line = "812|bob|NODE_FAIL|2026-12-06T10:00:00|2026-12-06T12:00:00|7200|2|g[1-2]|"
    line += "billing=64,cpu=64,gres/gpu:h100=16,gres/gpu=16,mem=1000G,node=2"
    (got,) = parse_jobs(line)
    assert got.gpus == 16 and got.gpu_hours == 32.0 and got.gpu_hours_per_node() == 16.0


def test_job_args_refuse_odd_names_and_ask_one_call():
    args = job_args("/usr/bin/sacct", start=SINCE, end=NOW)
    assert args[:5] == ["/usr/bin/sacct", "-n", "-P", "-X", "-a"]
    assert "--state=FAILED,NODE_FAIL" in args and not any("JobName" in a for a in args)
    try:
        job_args("sacct", start=SINCE, end=NOW, nodes=("n1;rm",))
    except Exception as exc:  # SlurmError
        assert "refusing" in str(exc)
    else:
        raise AssertionError("a node name with ';' was accepted")


def test_ranking_counts_nodechecks_drains_jobs_lost_and_time_drained():
    events = [
        event("g1", NOW - 50 * H, NOW - 40 * H, XID),
        event("g1", NOW - 20 * H, None, TREND),  # still drained
        event("g2", NOW - 30 * H, NOW - 29 * H, ADMIN),  # an admin's: not counted
        event("g3", NOW - 10 * H, NOW - 9 * H, XID),
    ]
    jobs = [
        job("101", "g1", NOW - 50.5 * H),  # ended 30 min before the first drain: lost
        job("102", "g[1-2]", NOW - 19 * H, gpus=16, nnodes=2),  # ended while g1 drained
        job("103", "g1", NOW - 100 * H),  # long before any drain: a failure, not a loss
        job("104", "g2", NOW - 29.5 * H),
    ]
    rows = rank(events, jobs, SINCE, NOW)
    assert [r.node for r in rows] == ["g1", "g3", "g2"]
    g1 = rows[0]
    assert g1.drains == 2 and g1.trend_drains == 1
    assert g1.checks == ("gpu.xid", "trend.gpu_ecc")
    assert g1.failed_jobs == 3
    assert [j.job_id for j in g1.jobs_before_drain] == ["101", "102"]
    assert g1.gpu_hours_lost == 32.0 + 32.0  # 8 GPUs x 4 h, and 16 x 4 h over 2 nodes
    assert g1.drained_s == 30 * H
    assert g1.mtbf_s == (7 * 86400 - 30 * H) / 2
    g2 = rows[2]
    assert g2.drains == 0 and g2.mtbf_s is None and g2.failed_jobs == 2
    assert g2.jobs_before_drain == ()  # an admin's drain is not nodecheck's to count


def test_drain_begun_before_the_window_counts_its_time_not_itself():
    rows = rank([event("g1", SINCE - 5 * H, SINCE + 5 * H, XID)], [], SINCE, NOW)
    assert rows[0].drains == 0 and rows[0].drained_s == 5 * H


def test_renderings():
    rows = rank([event("g1", NOW - 2 * H, None, TREND)], [job("9", "g1", NOW - H)], SINCE, NOW)
    table = render_table(rows, 7)
    assert table.splitlines()[1].split()[:3] == ["g1", "1", "1"]
    prom = render_prom(rows)
    assert 'nodecheck_lemon_drains{node="g1"} 1.0' in prom
    assert 'nodecheck_lemon_gpu_hours_lost{node="g1"} 32.0' in prom
    assert render_table([], 7).startswith("no node drained")
