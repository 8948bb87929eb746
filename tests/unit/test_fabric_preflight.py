"""fabric.preflight: the per-job key and the authenticated wire, the check's SKIP/ERROR
paths, and the probe itself on loopback (127.0.0.0/8 stands in for the fabric: every
address is local). Separate hosts with real links and a slow one: tests/netns/.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import make_ctx, options_of

import nodecheck.checks.fabric  # noqa: F401  (registers the fabric checks)
from nodecheck.checks.context import JobInfo
from nodecheck.checks.fabric.preflight_judge import JUDGING
from nodecheck.checks.registry import all_checks
from nodecheck.core.results import Status
from nodecheck.probes.fabric import preflight
from nodecheck.probes.fabric import preflight_wire as wire

CHECK = all_checks()["fabric.preflight"]
FAR = 3600.0  # a deadline that never ends a test: the sockets' answers do


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "munge.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    os.write(fd, os.urandom(128))
    os.close(fd)
    return path


# ------------------------------------------------------------------------------ key, wire


def test_job_key_differs_per_job_and_per_root_key():
    root = b"r" * 32
    assert wire.job_key(root, "12") == wire.job_key(root, "12")
    assert wire.job_key(root, "12") != wire.job_key(root, "13")
    assert wire.job_key(root, "12") != wire.job_key(b"s" * 32, "12")


def test_root_key_others_may_read_is_refused(key_file):
    assert len(wire.read_root_key(key_file)) == 128
    key_file.chmod(0o644)
    with pytest.raises(wire.RootKeyError, match="readable or writable by others"):
        wire.read_root_key(key_file)
    with pytest.raises(wire.RootKeyError, match="No such file"):
        wire.read_root_key(key_file.with_name("absent"))


def handshake(server_key: bytes, client_key: bytes, expect: str = "srv"):
    """Both ends of a handshake over a socketpair: (client outcome, server outcome)."""
    a, b = socket.socketpair()
    out: dict[str, object] = {}

    def serve() -> None:
        try:
            out["server"] = wire.server_handshake(b, server_key, "srv", time.monotonic() + 5)
        except wire.WireError as exc:
            out["server"] = exc
            b.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        out["client"] = wire.client_handshake(a, client_key, "cli", expect, time.monotonic() + 5)
    except wire.WireError as exc:
        out["client"] = exc
    thread.join()
    return out["client"], out["server"]


def test_handshake_with_the_job_key_gives_both_sides_a_channel():
    key = wire.job_key(b"r" * 32, "7")
    client, server = handshake(key, key)
    assert isinstance(client, wire.Channel) and isinstance(server, wire.Channel)
    assert client.peer == "srv" and server.peer == "cli"
    client.send({"op": "ping", "n": 3}, time.monotonic() + FAR)
    assert server.recv(time.monotonic() + 5) == {"op": "ping", "n": 3}
    server.send({"got": 1}, time.monotonic() + FAR)
    assert client.recv(time.monotonic() + 5) == {"got": 1}


def test_another_jobs_key_is_not_let_in():
    client, server = handshake(wire.job_key(b"r" * 32, "7"), wire.job_key(b"r" * 32, "8"))
    assert isinstance(server, wire.WireError) and "does not hold this job's key" in str(server)
    assert isinstance(client, wire.WireError)


def test_a_listener_answering_as_another_node_is_refused():
    key = wire.job_key(b"r" * 32, "7")
    client, _ = handshake(key, key, expect="other")
    assert isinstance(client, wire.WireError) and str(client) == "answered as srv"


def test_tampered_or_replayed_lines_fail_authentication():
    key = wire.job_key(b"r" * 32, "7")
    deadline = time.monotonic() + 5
    client, server = handshake(key, key)
    assert isinstance(client, wire.Channel) and isinstance(server, wire.Channel)
    client.send({"op": "push"}, deadline)
    line = server.sock.recv(4096)  # taken off the wire, resent with its body changed
    client.sock.sendall(line.replace(b"push", b"pull"))
    with pytest.raises(wire.WireError, match="failed authentication"):
        server.recv(deadline)
    client, server = handshake(key, key)
    client.send({"op": "push"}, deadline)
    line = server.sock.recv(4096)
    client.sock.sendall(line + line)  # delivered, then replayed
    assert server.recv(deadline) == {"op": "push"}
    with pytest.raises(wire.WireError, match="failed authentication"):
        server.recv(deadline)


def test_bulk_stream_counts_every_byte():
    key = wire.job_key(b"r" * 32, "7")
    client, server = handshake(key, key)
    got: list[int] = []
    thread = threading.Thread(target=lambda: got.append(server.recv_bulk(time.monotonic() + 30)))
    thread.start()
    sent = client.send_bulk(1_000_003, 30.0, time.monotonic() + 30)
    thread.join()
    assert sent == got[0] == 1_000_003


# ------------------------------------------------------------------------- check paths


def run_check(job: JobInfo, **options):
    ctx = make_ctx(job=job, options=options_of(CHECK, **options))
    return list(CHECK.func(ctx))


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (JobInfo(job_id="5"), "no job node list or job id (SLURM_NODELIST)"),
        (JobInfo(job_id="5", nodelist="n1"), "single-node job"),
        (JobInfo(job_id="5", nodelist="n[2-3]"), "n1 not in the job's node list"),
        (JobInfo(job_id="5", nodelist="n[1-300]"), "300 nodes, above max_nodes"),
    ],
)
def test_skips(job, message):
    [result] = run_check(job)
    assert (result.status, result.message) == (Status.SKIP, message)


def test_opt_in_per_partition():
    other = JobInfo(job_id="5", nodelist="n[1-2]", partition="debug")
    [result] = run_check(other, partitions=["gpu"])
    assert (result.status, result.message) == (Status.SKIP, "partition debug not among ['gpu']")
    assert JobInfo.from_env({"SLURM_JOB_PARTITION": "gpu"}).partition == "gpu"
    assert JobInfo.from_env({"SLURM_JOB_PARTITION": "a b"}).ignored == ("SLURM_JOB_PARTITION",)


def test_options_that_do_not_fit_the_checks_timeout_are_an_error_not_a_hang(key_file, tmp_path):
    """Killed at its deadline, the preflight would FAIL as hung on every node of the job:
    a join/measure setting the check's timeout_s cannot hold is refused up front."""
    job = JobInfo(job_id="5", nodelist="n[1-2]")
    opts = options_of(CHECK, join_s=6.0, measure_s=5.0, key_file=str(key_file))
    ctx = replace(make_ctx(job=job, options=opts), timeout_s=15.0)
    [result] = CHECK.func(ctx)
    assert result.status == Status.ERROR
    assert "(18 s) exceeds the check's timeout_s (15 s)" in result.message
    fits = replace(ctx, options={**opts, "join_s": 4.0}, timeout_s=15.0)
    assert all(
        r.status is not Status.ERROR or "timeout_s" not in r.message for r in CHECK.func(fits)
    )


def test_missing_or_open_key_is_an_error_not_a_verdict(tmp_path, key_file):
    job = JobInfo(job_id="5", nodelist="n[1-2]")
    [result] = run_check(job, key_file=str(tmp_path / "none"))
    assert result.status == Status.ERROR and "No such file" in result.message
    key_file.chmod(0o640)
    [result] = run_check(job, key_file=str(key_file))
    assert result.status == Status.ERROR and "readable or writable by others" in result.message


def test_own_address_not_on_this_node_is_an_error(key_file):
    # 192.0.2.0/24 is TEST-NET-1: never a local address
    job = JobInfo(job_id="5", nodelist="n[1-2]")
    [result] = run_check(job, key_file=str(key_file), address_template="192.0.2.{num}")
    assert result.status == Status.ERROR
    assert (
        result.message
        == "fabric address 192.0.2.1 is not on this node (address_template? interface?)"
    )


# ------------------------------------------------------------------- the probe, loopback


def setups(n: int, port: int, **kw) -> list[preflight.Setup]:
    nodes = tuple(f"n{i}" for i in range(1, n + 1))
    key = wire.job_key(b"r" * 32, "99")
    addrs = {x: (socket.AF_INET, f"127.0.0.{i}") for i, x in enumerate(nodes, start=1)}
    return [preflight.Setup(me=x, nodes=nodes, job="99", key=key, addresses=addrs, port=port,
                            **kw) for x in nodes]  # fmt: skip


def run_all(setups_: list[preflight.Setup]) -> dict[str, preflight.Outcome]:
    out: dict[str, preflight.Outcome] = {}
    threads = [
        threading.Thread(target=lambda s=s: out.__setitem__(s.me, preflight.run(s, JUDGING)))
        for s in setups_
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def test_four_nodes_on_loopback_agree_on_one_pass():
    got = run_all(setups(4, free_port(), join_s=3.0, max_bytes=1 << 20))
    assert {o.verdict.status for o in got.values()} == {"PASS"}, got
    assert len({o.verdict.message for o in got.values()}) == 1
    assert got["n1"].role == "coordinator" and got["n3"].role == "member"
    pairs = got["n2"].verdict.values["pairs"]
    assert set(pairs) == {"n1-n2", "n2-n3", "n3-n4", "n1-n4"}
    assert all(p["bps"] > 0 and p["latency_us"] > 0 for p in pairs.values())


def test_member_whose_coordinator_never_speaks_warns_and_returns():
    port = free_port()
    mute = socket.socket()
    mute.bind(("127.0.0.1", port))  # the coordinator's address: accepts, never greets
    mute.listen(8)
    try:
        member = setups(2, port, join_s=0.5, measure_s=0.5)[1]
        outcome = preflight.run(member, JUDGING)
    finally:
        mute.close()
    assert outcome.verdict.status == "WARN"
    assert outcome.verdict.message.startswith("preflight incomplete: coordinator n1 not reached")


def test_port_held_by_another_job_is_incomplete(key_file):
    port = free_port()
    other = socket.socket()
    other.bind(("127.0.0.2", port))
    other.listen(1)
    try:
        outcome = preflight.run(setups(2, port, join_s=0.2, measure_s=0.5)[1], JUDGING)
    finally:
        other.close()
    assert outcome.verdict.status == "WARN"
    assert outcome.listen_error.startswith("cannot listen on 127.0.0.2 port ")
    assert not outcome.own_address_missing


def test_the_check_on_three_loopback_nodes_agrees(key_file):
    from dataclasses import replace

    port = free_port()
    job = JobInfo(job_id="700", nodelist="n[1-3]")
    opts = options_of(
        CHECK, key_file=str(key_file), address_template="127.0.0.{num}", port=port - 700 % 100,
        transfer_mib=1,
    )  # fmt: skip
    out: dict[str, list] = {}

    def one(node: str) -> None:
        ctx = replace(make_ctx(job=job, options=opts), node=node)
        out[node] = list(CHECK.func(ctx))

    threads = [threading.Thread(target=one, args=(n,)) for n in ("n1", "n2", "n3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for node, (result,) in out.items():
        assert result.status == Status.PASS, (node, result)
        assert result.message.startswith("3 nodes, ring pairs at ")
        assert result.component == f"127.0.0.{node[1]}"
        assert result.values["port"] == port and result.values["coordinator"] == "n1"
