"""Hostile conditions that need a real Slurm: the controller is gone while we drain; a
probe or the state directory stuck on a filesystem that never answers."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

from nc_cluster import base_toml, wait_drained, wait_verdict

from tests.fixtures.fuse_hang import assert_nothing_holds_the_hook, hung_mount

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


# ------------------------------------------------- a filesystem that never answers (FUSE)


def _prolog_seconds(cluster, job: int) -> float:
    """How long slurmd itself waited for the job's prolog, from its own log (SlurmdDebug =
    debug, 22.05): "Note large processing time from prep_g_prolog: usec=N", written once the
    script has exited AND its stdout/stderr reached EOF (only for runs over a second, which a
    run with a hung probe always is)."""
    log = cluster.slurmd_log("n1")
    found = cluster.wait_for(
        lambda: re.findall(r"prep_g_prolog: usec=(\d+)", log.read_text(errors="replace")),
        90,
        message=f"slurmd's prolog timing for job {job}",
    )
    return int(found[-1]) / 1e6


@contextlib.contextmanager
def _hung_cluster(make_slurm_cluster, work: Path, answer_lookups: bool = False):
    """A one-node cluster whose slurmd logs its prolog times, and a FUSE mount that never
    answers (`answer_lookups`: lookups answer, nothing else does) at a short path: a drain
    reason keeps a component of up to 48 characters."""
    work.chmod(0o755)
    cluster = make_slurm_cluster(
        nodes=1, prolog=PROLOG, epilog=EPILOG, conf_overrides={"SlurmdDebug": "debug"}
    )
    with (
        tempfile.TemporaryDirectory(prefix="nc-", dir="/tmp") as short,
        hung_mount(Path(short) / "m", answer_lookups=answer_lookups) as mount,
    ):
        yield cluster, mount


def _hung_prolog(
    cluster, work: Path, config: str, reason_starts: str, log_readable: bool = True
) -> dict:
    """Submit a job to n1 and judge the failing prolog by what slurmd sees: nodecheck's
    reason, slurmd's own prolog time within budget_s (4) + 1 s, and nothing of the hook's
    left holding a descriptor (a process stuck in state D may stay, holding nothing of the
    hook's). With `log_readable`, the prolog's verdict in the log file is judged too.
    Returns what was left behind."""
    cluster.write_nodecheck_config(config)
    job = cluster.sbatch("-w", "n1", "--wrap", "true")
    reason = wait_drained(cluster, "n1", 30)
    assert reason.startswith(reason_starts), reason
    took = _prolog_seconds(cluster, job)
    assert took <= 4 + 1, took
    if log_readable:
        verdict = wait_verdict(cluster, work, "prolog", job)
        assert verdict["duration_s"] <= 4 + 1
        # The failed prolog's job gets its epilog (also stuck on the mount) before requeue.
        wait_verdict(cluster, work, "epilog", job)
    marker = f"SLURM_JOB_ID={job}"

    def settled() -> bool:
        # The failed prolog's epilog starts later and, unwatched without a readable log,
        # may still be running (state R) when the prolog's leftovers already sit in D.
        try:
            assert_nothing_holds_the_hook(marker)
        except AssertionError:
            return False
        return True

    cluster.wait_for(settled, 30, message="the hook's processes ended or stuck holding nothing")
    left = assert_nothing_holds_the_hook(marker)
    print(f"slurmd prolog {took:.2f}s, left: {left}")
    cluster.run(["scancel", str(job)], check=False)
    return left


HUNG_CLASS = """
[[node_class]]
name = "hung"
match = ["n1"]
budget_s = 4
[node_class.checks."host.services"]
enabled = false
"""


def test_probe_stuck_in_the_kernel_does_not_hold_slurmds_prolog(make_slurm_cluster, tmp_path):
    """host.mounts on a FUSE mount that never answers: its statvfs sleeps in state D."""
    with _hung_cluster(make_slurm_cluster, tmp_path) as (cluster, mount):
        mounts = f"""[node_class.checks."host.mounts"]
required = ["{mount}"]
probe_timeout_s = 1.0
"""
        config = base_toml(tmp_path) + HUNG_CLASS + mounts
        _hung_prolog(cluster, tmp_path, config, f"nodecheck: host.mounts {mount}: not responding")


def test_state_dir_on_a_hung_filesystem_does_not_hold_slurmds_prolog(make_slurm_cluster, tmp_path):
    """state_dir on a FUSE mount that never answers: the prolog blames the state dir."""
    with _hung_cluster(make_slurm_cluster, tmp_path) as (cluster, mount):
        ours = f'state_dir = "{tmp_path}/state/{{node}}"'
        config = base_toml(tmp_path).replace(ours, f'state_dir = "{mount}/{{node}}"')
        assert config != base_toml(tmp_path)
        _hung_prolog(
            cluster,
            tmp_path,
            config + HUNG_CLASS,
            f"nodecheck: nodecheck.state {mount}/n1: no answer",
        )


def test_log_file_that_hangs_mid_run_does_not_hold_slurmds_prolog(make_slurm_cluster, tmp_path):
    """log_file on a filesystem that answers the first look (lookups) and hangs when the run
    creates its directory: the run sticks in the kernel, its keeper (the prolog process
    slurmd started) ends the prolog within the node class's budget + 1 s, as slurmd's own log
    shows, and drains with a reason naming the stuck step."""
    with _hung_cluster(make_slurm_cluster, tmp_path, answer_lookups=True) as (cluster, mount):
        ours = f'log_file = "{tmp_path}/nodecheck.log"'
        config = base_toml(tmp_path).replace(ours, f'log_file = "{mount}/log/nodecheck.log"')
        assert config != base_toml(tmp_path)
        stuck = "nodecheck: nodecheck.run node: run stuck past its budget while opening the log"
        left = _hung_prolog(cluster, tmp_path, config + HUNG_CLASS, stuck, log_readable=False)
        assert left, "the stuck run should still be there, in the kernel"
