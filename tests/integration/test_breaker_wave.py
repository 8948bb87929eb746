"""Circuit breaker on a real 8-node Slurm: a failure on most nodes at once (a bad config push)
must not let nodecheck drain past its limit; `nodecheck report` says why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EPILOG = REPO / "epilog" / "nodecheck-epilog"
HEALTH = REPO / "health" / "nodecheck-health"
PROLOG = REPO / "prolog" / "nodecheck-prolog"


def test_breaker_stops_nodecheck_drains_at_the_threshold(make_slurm_cluster, tmp_path):
    tmp_path.chmod(0o755)
    cluster = make_slurm_cluster(nodes=8, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH)
    cluster.write_nodecheck_config(f"""
log_file = "{tmp_path}/nodecheck.log"
state_dir = "{tmp_path}/state/{{node}}"
metrics_file = ""
slurm_backend = "scontrol"
budget_s = 15
breaker_max_share = 0.25   # 8 nodes: nodecheck may drain 2
breaker_floor = 1
breaker_max_drains = 0
[[node_class]]
name = "pushed-bad-config"
match = ["n[1-6]"]
[node_class.checks."host.mounts"]
required = ["/mount-that-a-bad-push-expects"]
""")
    jobs = [cluster.sbatch("-w", f"n{i}", "--wrap", "true") for i in range(1, 7)]

    def all_six_down():
        states = cluster.node_states()
        return all(states.get(f"n{i}", "").startswith("drain") for i in range(1, 7)) and states

    cluster.wait_for(all_six_down, 60, message="the six failing nodes drained")
    reasons = {f"n{i}": cluster.node_state(f"n{i}")[1] for i in range(1, 9)}
    ours = sorted(n for n, r in reasons.items() if r.startswith("nodecheck:"))
    slurms = sorted(n for n, r in reasons.items() if r and not r.startswith("nodecheck:"))
    # The breaker held nodecheck to its limit; Slurm's own prolog-failure drain kept the
    # jobs off the others, and the healthy nodes were never touched.
    assert len(ours) == 2, reasons
    assert len(slurms) == 4, reasons
    assert all(reasons[n].startswith("Prolog error") for n in slurms), reasons
    assert reasons["n7"] == "" and reasons["n8"] == ""
    log = [json.loads(line) for line in (tmp_path / "nodecheck.log").read_text().splitlines()]
    tripped = [e for e in log if e["event"] == "circuit_breaker_open"]
    assert sorted(e["node"] for e in tripped) == slurms
    assert all("partition debug" in e["why"] for e in tripped)

    env = {
        "PATH": "/usr/bin:/bin",
        "SLURM_CONF": str(cluster.conf_path),
        "NODECHECK_CONFIG": str(cluster.nodecheck_config),
    }
    out = subprocess.run(
        [sys.executable, "-m", "nodecheck", "report", "--json"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(out.stdout)
    assert sorted(r["node"] for r in report["nodes"]) == ours
    assert {r["check"] for r in report["nodes"]} == {"host.mounts"}
    assert {r["remedy"] for r in report["nodes"]} == {"admin"}
    [debug] = report["breaker"]
    assert debug["open"] and (debug["drained"], debug["total"]) == (2, 8)
    assert sorted(h["node"] for h in report["held_by_slurm"]) == slurms
    text = subprocess.run(
        [sys.executable, "-m", "nodecheck", "report"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "CIRCUIT BREAKER OPEN in partition debug" in text
    for job in jobs:
        cluster.run(["scancel", str(job)], check=False)
