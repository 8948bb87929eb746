"""The fabric stage of `nodecheck validate` on a real Slurm (issue 25 item 2, issue 27 item 2).

deep.fabric runs for real: torch.distributed with gloo on the CPU, one rank per node of
one multi-node validation job, started by srun from the job's batch step, the rendezvous
on the first node's address (`addresses` maps the test cluster's nodes to 127.0.0.1,
where all their slurmd run), keyed by the run's secret that validate handed the job
through sbatch's environment. Each quarantined node comes back with its own verdict.

Every controller call is counted: the config's `scontrol` is a recording wrapper in a
directory that also holds squeue, sbatch, scancel, sacct and srun wrappers (the loop takes
them from next to scontrol), so the test sees exactly what validate asked slurmctld.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from nc_cluster import EPILOG, HEALTH, PROLOG, REPO, base_toml, broken_mount_class

pytest.importorskip("torch")

NODECHECK = Path(sys.executable).parent / "nodecheck"
TOOLS = ("scontrol", "squeue", "sbatch", "scancel", "sacct", "srun")
POLL_S = 1


def recorder(work: Path) -> tuple[Path, Path]:
    """Wrappers that log `TIME PARENT-PID TOOL ARGS` and run the real tool."""
    bindir, calls = work / "bin", work / "controller-calls"
    bindir.mkdir()
    for tool in TOOLS:
        wrapper = bindir / tool
        wrapper.write_text(
            f'#!/bin/sh\necho "$(/usr/bin/date +%s.%N) $PPID {tool} $*" >> {calls}\n'
            f'exec /usr/bin/{tool} "$@"\n'
        )
        wrapper.chmod(0o755)
    return bindir / "scontrol", calls


def fabric_toml(
    work: Path, scontrol: Path, partners: str = "", join_timeout_s: int = 60, rails: int = 0
) -> str:
    """Validation by host.mounts (each node's own job) and deep.fabric (the fabric stage),
    small buffers on the CPU; slow_fraction 0.1: ranks sharing two loaded cores differ a
    lot, and no node here is meant to be slow."""
    addresses = ", ".join(f'n{i} = "127.0.0.1"' for i in range(1, 5))
    return (
        base_toml(
            work,
            scontrol=str(scontrol),
            extra=f"""
validate_quick_checks = ["host.mounts", "deep.fabric"]
escalation = ["drain"]
validate_command = "{NODECHECK}"
validate_poll_s = {POLL_S}
validate_fabric_partners = "{partners}"
validate_fabric_rails = {rails}
""",
        )
        + f"""
[checks."deep.fabric"]
device = "cpu"
addresses = {{ {addresses} }}
port = 29737
join_timeout_s = {join_timeout_s}
measure_timeout_s = 60
collective_mib = 0.25
pair_mib = 0.25
repeats = 2
slow_fraction = 0.1
"""
    )


def validate(cluster, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    argv = [sys.executable, "-m", "nodecheck", "validate", *args, "--timeout", "150"]
    env = {
        "PATH": "/usr/bin:/bin",
        "SLURM_CONF": str(cluster.conf_path),
        "NODECHECK_CONFIG": str(cluster.nodecheck_config),
    }
    proc = subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), proc.pid


def calls_of(calls: Path, pid: int) -> list[tuple[float, str, list[str]]]:
    """(time, tool, args) of every call the process `pid` made itself."""
    out = []
    for line in calls.read_text().splitlines():
        when, parent, tool, *args = line.split()
        if int(parent) == pid:
            out.append((float(when), tool, args))
    return out


def lines_of(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if " job " in line}


def job_fields(cluster, job: str) -> dict[str, str]:
    out = cluster.scontrol("show", "-o", "job", job).stdout
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    # AdminComment holds spaces: from Slurm's JSON record instead.
    [record] = [j for j in json.loads(cluster.run(["squeue", "--json"]).stdout)["jobs"]
                if str(j["job_id"]) == job]  # fmt: skip
    fields["AdminComment"] = record["admin_comment"]
    return fields


def history(cluster, nodes: str) -> list[tuple[str, str]]:
    env = {
        "PATH": "/usr/bin:/bin",
        "SLURM_CONF": str(cluster.conf_path),
        "NODECHECK_CONFIG": str(cluster.nodecheck_config),
    }
    got = subprocess.run(
        [sys.executable, "-m", "nodecheck", "report", "--history", nodes, "--json"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    events = json.loads(got.stdout)["events"]
    return [(e["node"], e["what"]) for e in events if e["source"] == "nodecheck"]


def test_validate_runs_deep_fabric_across_the_quarantined_nodes_in_one_job(
    make_slurm_cluster, work
):
    cluster = make_slurm_cluster(
        nodes=4, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, health_interval=0
    )
    scontrol, calls = recorder(work)
    # Two rounds per node (validate_fabric_rails = 2: on a GPU node, GPU 0's rail, then GPU
    # 1's; here both on the CPU), each under its own secret derived on every node alike.
    fine = fabric_toml(work, scontrol, rails=2)
    # n3 fails its own job (a mount only the validation level checks): no fabric stage for it.
    cluster.write_nodecheck_config(fine + broken_mount_class(("n3",), phases=("manual",)))
    started = time.monotonic()
    run, pid = validate(cluster, "n[1-3]", "--why", "fabric turn-up")
    took = time.monotonic() - started
    assert run.returncode == 1, run.stdout + run.stderr  # n3 failed
    lines = lines_of(run.stdout)
    for node in ("n1", "n2"):
        assert "passed: back in service (deep.fabric found no fault)" in lines[node], run.stdout
    assert "failed: drained" in lines["n3"] and "host.mounts" in lines["n3"], run.stdout
    # One job ran deep.fabric across n1 and n2: each node's own job, then the same fabric job.
    own1, fabric = lines["n1"].split()[2].split(",")
    own2, fabric2 = lines["n2"].split()[2].split(",")
    assert fabric == fabric2 and own1 != own2, run.stdout
    assert lines["n3"].split()[2].count(",") == 0  # failed alone: never in the fabric job
    fields = job_fields(cluster, fabric)
    assert fields["NodeList"] == "n[1-2]" and fields["JobName"] == "nodecheck-validate"
    assert fields["AdminComment"] == "nodecheck deep.fabric verdicts: n1=0 n2=0", fields
    # deep.fabric measured there: the tasks' own runs say so in the nodes' log.
    measured = [
        json.loads(line) for line in (work / "nodecheck.log").read_text().splitlines()
        if line.startswith("{") and '"deep.fabric"' in line and "busbw" in line
    ]  # fmt: skip
    rounds = [e["node"] for e in measured if e.get("status") == "PASS"]
    assert sorted(rounds) == ["n1", "n1", "n2", "n2"], measured  # two rounds on each
    # The validation's end is recorded once per node, by the fabric stage (the ladder
    # counts failures since the last pass: an own job's pass must not hide a fabric fail).
    assert sorted(history(cluster, "n[1-3]")) == [
        ("n1", "validation passed"),
        ("n2", "validation passed"),
        ("n3", "validation failed"),
    ]
    assert cluster.node_state("n1")[0] == "idle" and cluster.node_state("n2")[0] == "idle"
    assert cluster.node_state("n3")[0].startswith("drain")
    assert "nodecheck_validation" not in cluster.scontrol("show", "reservation").stdout

    # The controller's cost: one squeue per look for all jobs, the node table at most once
    # per look and never per node, no `scontrol show job`, and the secret on no command line.
    made = calls_of(calls, pid)
    squeues = [args for _, tool, args in made if tool == "squeue"]
    tables = [a for _, tool, a in made if tool == "scontrol" and a[-2:] == ["show", "node"]]
    per_node = [a for _, tool, a in made if tool == "scontrol" and "node" in a[-2:-1]]
    looks = took / POLL_S
    assert len(squeues) <= looks + 4, (len(squeues), took)  # + claim (2) and leave (2)
    assert len(tables) <= len(squeues) + 1, (len(tables), len(squeues))  # + the start's
    assert per_node == [], per_node
    assert not [a for _, tool, a in made if tool == "scontrol" and "job" in a], made
    sbatch = [a for _, tool, a in made if tool == "sbatch"]
    assert len(sbatch) == 4  # three own jobs, one fabric job
    assert not [a for a in sbatch if any("SECRET" in w.upper() for w in a)], sbatch
    assert "--nodes=2" in sbatch[-1] and "--nodelist=n1,n2" in sbatch[-1], sbatch[-1]
    # The batch step started one task per node with srun.
    assert [a for _, tool, a in calls_of_all(calls) if tool == "srun"]

    # A lone node is paired with a known-good partner, which is never judged nor kept.
    cluster.write_nodecheck_config(fabric_toml(work, scontrol, partners="n4"))
    alone, _ = validate(cluster, "n1")
    assert alone.returncode == 0, alone.stdout + alone.stderr
    line = lines_of(alone.stdout)["n1"]
    assert "passed: back in service (deep.fabric found no fault)" in line, alone.stdout
    fields = job_fields(cluster, line.split()[2].split(",")[1])
    assert fields["NodeList"] == "n[1,4]", fields
    assert fields["AdminComment"] == "nodecheck deep.fabric verdicts: n1=0", fields
    assert cluster.node_state("n4") == ("idle", "")
    assert "nodecheck_validation" not in cluster.scontrol("show", "reservation").stdout
    assert [e for e in history(cluster, "n4")] == []  # measured against, never judged

    # A rank that hangs: n2's fabric worker is frozen (SIGSTOP, as a process stuck in the
    # kernel is) as soon as it starts. Its own node FAILs deep.fabric, naming the rank, and
    # is drained with it; the others WARN (n2 never joined) and return. (Short joins: the
    # others time out waiting for n2 whatever happens, and their WARN returns them.)
    hung = (
        fabric_toml(work, scontrol, join_timeout_s=6)
        + """
[[node_class]]
name = "frozen"
match = ["n2"]
[node_class.checks."deep.fabric"]
start_timeout_s = 3
join_timeout_s = 3
"""
    )
    cluster.write_nodecheck_config(hung)
    frozen: list[int] = []
    stop = threading.Event()
    freezer = threading.Thread(target=freeze_fabric_worker, args=("n2", stop, frozen))
    freezer.start()
    try:
        three, _ = validate(cluster, "n[1-2],n4")
    finally:
        stop.set()
        freezer.join()
    assert frozen, "n2's fabric worker was never seen"
    lines = lines_of(three.stdout)
    assert three.returncode == 1, three.stdout + three.stderr
    assert "failed: drained (nodecheck: deep.fabric n2: " in lines["n2"], three.stdout
    reason = cluster.node_state("n2")[1]
    assert reason.startswith("nodecheck: deep.fabric n2: fabric worker of rank 1 (n2) hung")
    assert "[validate job " in reason, reason
    for node in ("n1", "n4"):
        assert "passed: back in service (deep.fabric found no fault)" in lines[node], three.stdout
        assert cluster.node_state(node)[0] == "idle"


def freeze_fabric_worker(node: str, stop: threading.Event, frozen: list[int]) -> None:
    """SIGSTOP the deep.fabric worker that runs for `node` (its srun task's environment
    names the node), as soon as it exists."""
    want = f"SLURMD_NODENAME={node}".encode()
    while not stop.is_set():
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"fabric_worker" not in cmdline:
                    continue
                if want in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    os.kill(int(pid), signal.SIGSTOP)
                    frozen.append(int(pid))
                    return
            except OSError:
                continue
        time.sleep(0.05)


def calls_of_all(calls: Path) -> list[tuple[float, str, list[str]]]:
    out = []
    for line in calls.read_text().splitlines():
        when, _parent, tool, *args = line.split()
        out.append((float(when), tool, args))
    return out
