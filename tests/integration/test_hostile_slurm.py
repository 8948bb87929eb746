"""Hostile conditions that need a real Slurm: the controller is gone while we drain; a
probe or the state directory stuck on a filesystem that never answers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from nc_cluster import base_toml, wait_drained, wait_verdict

from tests.fixtures.fuse_hang import hung_mount

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


def _leftovers(job: int) -> dict[int, tuple[str, dict[int, str]]]:
    """Processes of this job's hook that are still there: pid -> (state, fd -> target).

    Looked at thread by thread: a probe whose main thread has exited while another thread
    sleeps in the kernel shows as a zombie with no command line, yet that thread still has
    the memory (environment) and every descriptor."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for task in (entry / "task").iterdir():
                with contextlib.suppress(OSError):
                    state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    environ = (task / "environ").read_bytes().split(b"\0")
                    if state in ("Z", "X") or b"nodecheck" not in (task / "cmdline").read_bytes():
                        continue
                    if f"SLURM_JOB_ID={job}".encode() not in environ:
                        continue
                    fds = {int(fd.name): os.readlink(fd) for fd in (task / "fd").iterdir()}
                    out[int(entry.name)] = (state, fds)
    return out


def _assert_nothing_holds_the_hook(job: int) -> dict[int, tuple[str, dict[int, str]]]:
    """No nodecheck process of the job outlives the hook, except one stuck in the kernel
    (state D: SIGKILL cannot end it) that holds nothing of the hook's: /dev/null for
    stdin/stdout/stderr and its own report pipe."""
    left = _leftovers(job)
    for pid, (state, fds) in left.items():
        assert state == "D", (pid, state, fds)
        assert {fds.get(n) for n in (0, 1, 2)} == {"/dev/null"}, (pid, fds)
        assert len([t for fd, t in fds.items() if fd > 2]) <= 1, (pid, fds)
    return left


def test_probe_stuck_in_the_kernel_does_not_hold_slurmds_prolog(make_slurm_cluster, tmp_path):
    """host.mounts on a FUSE mount that never answers: its statvfs sleeps in state D. The
    prolog ends within budget_s + 1 s as slurmd sees it, the node is drained with
    nodecheck's reason naming the mount, and the stuck probe holds none of slurmd's pipes."""
    tmp_path.chmod(0o755)
    cluster = make_slurm_cluster(
        nodes=1, prolog=PROLOG, epilog=EPILOG, conf_overrides={"SlurmdDebug": "debug"}
    )
    # A short path: the reason keeps a component of up to 48 characters.
    with (
        tempfile.TemporaryDirectory(prefix="nc-", dir="/tmp") as short,
        hung_mount(Path(short) / "m") as mount,
    ):
        cluster.write_nodecheck_config(
            base_toml(tmp_path)
            + f"""
[[node_class]]
name = "hung"
match = ["n1"]
budget_s = 4
[node_class.checks."host.mounts"]
required = ["{mount}"]
probe_timeout_s = 1.0
[node_class.checks."host.services"]
enabled = false
"""
        )
        job = cluster.sbatch("-w", "n1", "--wrap", "true")
        reason = wait_drained(cluster, "n1", 30)
        assert reason.startswith(f"nodecheck: host.mounts {mount}: not responding"), reason
        took = _prolog_seconds(cluster, job)
        assert took <= 4 + 1, took
        verdict = wait_verdict(cluster, tmp_path, "prolog", job)
        assert verdict["duration_s"] <= 4 + 1
        # The failed prolog's job gets its epilog (also stuck on the mount) before requeue.
        wait_verdict(cluster, tmp_path, "epilog", job)
        cluster.wait_for(lambda: all(s == "D" for s, _ in _leftovers(job).values()), 10)
        left = _assert_nothing_holds_the_hook(job)
        print(f"slurmd prolog {took:.2f}s, hook {verdict['duration_s']}s, left: {left}")
        cluster.run(["scancel", str(job)], check=False)
