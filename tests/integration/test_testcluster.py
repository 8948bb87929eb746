"""Smoke test of the throw-away Slurm cluster itself (tools/testcluster.py).

Cluster-level only: the Prolog/Epilog here are tiny scripts that exit 0, so this does not
depend on nodecheck's code.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
import testcluster


def _script(path: Path, body: str) -> Path:
    # No PATH in a Prolog/Epilog: absolute paths only, shebang included.
    path.write_text(f"#!/bin/sh\n{body}\nexit 0\n")
    path.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return path


@pytest.fixture
def smoke_cluster(make_slurm_cluster, tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    marks.chmod(0o777)
    prolog = _script(scripts / "prolog", f'/usr/bin/touch "{marks}/prolog.$SLURM_JOB_ID"')
    epilog = _script(scripts / "epilog", f'/usr/bin/touch "{marks}/epilog.$SLURM_JOB_ID"')
    health = _script(
        scripts / "health",
        f'/usr/bin/env > "{marks}/health.env.$SLURMD_NODENAME"',
    )
    cluster = make_slurm_cluster(
        nodes=2, prolog=prolog, epilog=epilog, health_program=health, health_interval=0
    )
    cluster.marks = marks
    return cluster


def test_cluster_smoke(smoke_cluster, tmp_path):
    cluster = smoke_cluster

    # Layout: private, root-owned state dir; nodecheck.toml path next to slurm.conf.
    st = cluster.state_dir.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
    assert cluster.nodecheck_config.parent == cluster.conf_path.parent
    assert cluster.env["SLURM_CONF"] == str(cluster.conf_path)

    # All nodes up and idle.
    assert cluster.node_states() == {"n1": "idle", "n2": "idle"}
    assert cluster.node_state("n1") == ("idle", "")

    # A batch job as root on a chosen node runs to COMPLETED, Prolog and Epilog ran.
    out = tmp_path / "job.out"
    job = cluster.sbatch("-w", "n2", "-o", str(out), "--wrap", "echo ran on $SLURMD_NODENAME")
    cluster.wait_for(lambda: cluster.job_state(job) == "COMPLETED", 30, message=f"job {job}")
    assert out.read_text().strip() == "ran on n2"
    assert (cluster.marks / f"prolog.{job}").exists()
    cluster.wait_for(lambda: (cluster.marks / f"epilog.{job}").exists(), 15, message="epilog")

    # Drain with a reason full of spaces, colons and brackets; it round-trips exactly.
    reason = "nodecheck: gpu.ecc gpu3: volatile DBE=2 (limit 0) [prolog job 17]"
    cluster.drain("n1", reason)
    state, got = cluster.node_state("n1")
    assert state == "drained"
    assert got == reason
    assert cluster.node_state("n2") == ("idle", "")

    # Jobs avoid the drained node; resume (+ reconfigure) makes it schedulable again.
    cluster.resume("n1")
    cluster.wait_for(lambda: cluster.node_state("n1") == ("idle", ""), 20, message="resume")
    job = cluster.sbatch("-w", "n1", "-o", "/dev/null", "--wrap", "/bin/true")
    cluster.wait_for(lambda: cluster.job_state(job) == "COMPLETED", 30, message=f"job {job}")


def test_health_wrapper_gets_config_paths(smoke_cluster):
    """HealthCheckProgram runs with an empty environment; the generated wrapper must hand
    the program SLURM_CONF and NODECHECK_CONFIG (and nothing pretends PATH is set)."""
    cluster = smoke_cluster
    res = os.spawnve(
        os.P_WAIT,
        str(cluster.health_wrapper),
        [str(cluster.health_wrapper)],
        {"SLURMD_NODENAME": "n1"},
    )
    assert res == 0
    env = dict(
        line.split("=", 1)
        for line in (cluster.marks / "health.env.n1").read_text().splitlines()
        if "=" in line
    )
    assert env["SLURM_CONF"] == str(cluster.conf_path)
    assert env["NODECHECK_CONFIG"] == str(cluster.nodecheck_config)
    assert env["SLURMD_NODENAME"] == "n1"


def test_stop_is_idempotent_and_leaves_nothing(smoke_cluster):
    cluster = smoke_cluster
    pids = cluster.pids()
    assert set(pids) == {"munged", "slurmctld", "slurmd.n1", "slurmd.n2"}
    job = cluster.sbatch("-o", "/dev/null", "--wrap", "/bin/sleep 600")
    cluster.wait_for(lambda: cluster.job_state(job) == "RUNNING", 30, message="running job")
    cluster.stop()
    cluster.stop()
    assert cluster.pids() == {}
    for pid in pids.values():
        assert not _running(pid)


def _running(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X")


def test_reset_cancels_jobs_and_resumes_nodes(smoke_cluster):
    cluster = smoke_cluster
    cluster.drain("n1", "admin: cable swap")
    cluster.drain("n2", "nodecheck: ib.port mlx5_0/1: Down [epilog job 3]")
    job = cluster.sbatch("-o", "/dev/null", "--wrap", "/bin/true")
    assert cluster.job_state(job) == "PENDING"
    cluster.reset()
    assert cluster.node_states() == {"n1": "idle", "n2": "idle"}
    assert cluster.job_state(job) in ("CANCELLED", "")


def test_ports_taken_between_the_look_and_the_bind_are_given_up(
    make_slurm_cluster, tmp_path_factory, monkeypatch
):
    """Two clusters starting at once can both find a block free; the one whose daemon then
    fails to bind must start on other ports, not fail."""
    state_dir = tmp_path_factory.mktemp("race")
    taken = testcluster.pick_port_base(state_dir, 2)
    squatter = socket.socket()
    # As the daemons and the look do: a connection of an earlier cluster in TIME_WAIT on
    # this port must not fail the bind (a listening socket still keeps the port to itself).
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", taken))  # slurmctld's port of that block
    squatter.listen()
    real_free = testcluster._port_free
    # The look happened before the squatter bound: it saw the block free.
    monkeypatch.setattr(testcluster, "_port_free", lambda p: p == taken or real_free(p))
    try:
        cluster = make_slurm_cluster(nodes=1, state_dir=state_dir)
        assert cluster.port_base != taken
        assert cluster.node_states() == {"n1": "idle"}
    finally:
        squatter.close()


def test_up_refuses_a_health_program_without_a_nodecheck_config(tmp_path, capsys):
    """It used to start a cluster whose health runs found no config and did nothing."""
    code = testcluster._cli(
        ["up", "--state-dir", str(tmp_path / "c"), "--health-program", "/bin/true"]
    )
    assert code == 2
    assert "--health-program needs --nodecheck-config" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # nothing started


def test_up_takes_the_reboot_program_and_accounting_flags(monkeypatch, tmp_path):
    seen = {}

    def start(self):
        seen.update(reboot=self.reboot_program, accounting=self.accounting)
        raise testcluster.ClusterError("not started in this test")

    monkeypatch.setattr(testcluster.TestCluster, "start", start)
    argv = ["up", "--state-dir", str(tmp_path / "c"), "--reboot-program", "--accounting"]
    assert testcluster._cli(argv) == 1
    assert seen == {"reboot": True, "accounting": True}
