"""The agent on a real Slurm: slurmd's prolog and epilog handed to `nodecheck agent`,
drains included, and the in-process run taking over once the agent is gone."""

from __future__ import annotations

import json
import shlex
import signal
import sys
from pathlib import Path

from nc_cluster import EPILOG, PROLOG, REPO, base_toml, events, wait_drained, wait_verdict

from tests.fixtures.agent import start_agent

MISSING_MOUNT = "/nodecheck-test-missing-mount"


def hook_wrapper(work: Path, entrypoint: Path, sock: Path) -> Path:
    """What a site's systemd drop-in for slurmd would do: point the hooks at the socket."""
    script = work / f"{entrypoint.name}-via-agent"
    script.write_text(
        "#!/bin/sh\n"
        f"NODECHECK_AGENT_SOCKET={shlex.quote(str(sock))}\nexport NODECHECK_AGENT_SOCKET\n"
        f"exec {shlex.quote(str(entrypoint))}\n"
    )
    script.chmod(0o755)
    return script


def agent_runs(log: Path) -> list[dict]:
    found = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    return [e for e in found if e["event"] == "agent_run"]


def test_slurmd_hooks_run_in_the_agent_and_fall_back_without_it(make_slurm_cluster, work):
    sock = work / "run" / "agent.sock"
    broken_n2 = (
        '[[node_class]]\nname = "broken"\nmatch = ["n2"]\n'
        f'[node_class.checks."host.mounts"]\nrequired = ["{MISSING_MOUNT}"]\n'
    )
    cluster = make_slurm_cluster(
        nodes=2,
        prolog=hook_wrapper(work, PROLOG, sock),
        epilog=hook_wrapper(work, EPILOG, sock),
        nodecheck_config_text=base_toml(work, extra=broken_n2),
    )
    log = work / "agent.log"
    agent = start_agent([sys.executable, "-I", "-m", "nodecheck", "agent"], sock, log, REPO)
    try:
        job = cluster.sbatch("-w", "n1", "--wrap", "true")
        cluster.wait_for(lambda: cluster.job_state(job) == "COMPLETED", 30, message="job done")
        assert wait_verdict(cluster, work, "prolog", job)["status"] == "PASS"
        assert wait_verdict(cluster, work, "epilog", job)["status"] == "PASS"
        served = {(r["phase"], r["job"]) for r in agent_runs(log)}
        assert {("prolog", int(job)), ("epilog", int(job))} <= served

        # A failing prolog through the agent drains with nodecheck's reason (exit 1 reached
        # slurmd: the job is requeued, not run).
        pinned = cluster.sbatch("-w", "n2", "--wrap", "true")
        reason = wait_drained(cluster, "n2", 30)
        assert reason.startswith(f"nodecheck: host.mounts {MISSING_MOUNT}: not mounted")
        assert ("prolog", int(pinned)) in {(r["phase"], r["job"]) for r in agent_runs(log)}
        cluster.wait_for(lambda: cluster.job_state(pinned) == "PENDING", 30, message="requeued")
        cluster.run(["scancel", str(pinned)], check=False)
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0
    assert not sock.exists()

    before = len(agent_runs(log))
    later = cluster.sbatch("-w", "n1", "--wrap", "true")
    cluster.wait_for(lambda: cluster.job_state(later) == "COMPLETED", 30, message="job done")
    assert wait_verdict(cluster, work, "prolog", later)["status"] == "PASS"
    assert len(agent_runs(log)) == before  # no agent: the hooks ran in-process
    assert not events(work, "agent_unavailable")  # no socket file: not even tried
