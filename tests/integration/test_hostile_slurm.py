"""Hostile conditions that need a real Slurm: the controller is gone while we drain."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EPILOG = REPO / "epilog" / "nodecheck-epilog"
PROLOG = REPO / "prolog" / "nodecheck-prolog"


def test_controller_down_while_draining_retries_within_budget_then_exits_nonzero(
    make_slurm_cluster, tmp_path
):
    tmp_path.chmod(0o755)
    cluster = make_slurm_cluster(nodes=1, prolog=PROLOG, epilog=EPILOG)
    cfg = cluster.write_nodecheck_config(f"""
log_file = "{tmp_path}/nodecheck.log"
state_dir = "{tmp_path}/state"
metrics_file = ""
killswitch_file = "{tmp_path}/disabled"
slurm_backend = "scontrol"
budget_s = 8
drain_attempts = 3
[checks."host.mounts"]
required = ["/nodecheck-test-missing-mount"]
""")
    # Stop slurmctld by the PID the cluster recorded when it started it.
    cluster._signal_and_wait(["slurmctld"], 15)
    assert not cluster._alive("slurmctld")
    env = {
        "SLURMD_NODENAME": "n1",
        "SLURM_JOB_ID": "41",
        "SLURM_CONF": str(cluster.conf_path),
        "NODECHECK_CONFIG": str(cfg),
    }
    started = time.monotonic()
    out = subprocess.run(
        [str(PROLOG)], env=env, cwd="/", capture_output=True, text=True, timeout=60
    )
    wall = time.monotonic() - started
    events = [json.loads(ln) for ln in out.stderr.splitlines() if ln.startswith("{")]
    assert out.returncode == 1, out.stderr[-2000:]  # Slurm drains the node itself on this
    assert wall < 8 + 0.5, wall
    failed = [e for e in events if e["event"] == "slurm_call_failed"]
    assert failed, out.stderr[-2000:]
    assert any("contact" in e["error"] or "timed out" in e["error"] for e in failed), failed
    [verdict] = [e for e in events if e["event"] == "verdict"]
    assert verdict["action"] == "drain failed"
    assert verdict["reason"].startswith("nodecheck: host.mounts /nodecheck-test-missing-mount")
    assert "Traceback" not in out.stderr
