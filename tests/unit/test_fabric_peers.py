"""fabric.peers: node lists, peer choice, the verdict, and the probe itself on loopback.

Loopback (127.0.0.0/8, every address local) stands in for the fabric; a peer that is
"silent" is a socket whose accept queue is full, so SYNs to it are dropped and connects
time out, as across a dead link. Separate hosts with real links: tests/netns/.
"""

from __future__ import annotations

import socket
import threading

import pytest
from helpers import make_ctx, options_of

import nodecheck.checks.fabric  # noqa: F401  (registers the fabric checks)
from nodecheck.checks.context import JobInfo
from nodecheck.checks.fabric.peers import judge
from nodecheck.checks.registry import all_checks
from nodecheck.core.results import Status
from nodecheck.probes.fabric import peers as peer_probe

CHECK = all_checks()["fabric.peers"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_node_address():
    assert peer_probe.node_address("gpu012", "10.10.0.{num}", {}) == "10.10.0.12"
    assert peer_probe.node_address("gpu012", "{node}-ib", {}) == "gpu012-ib"
    assert peer_probe.node_address("gpu012", "{node}-ib", {"gpu012": "10.9.9.9"}) == "10.9.9.9"
    with pytest.raises(ValueError):
        peer_probe.node_address("n1", "{host}", {})


def test_choose_peers_all_or_symmetric_ring_neighbours():
    nodes = [f"n{i}" for i in range(1, 6)]
    assert peer_probe.choose_peers(nodes, "n3", 8) == ["n1", "n2", "n4", "n5"]
    assert peer_probe.choose_peers(nodes, "n9", 8) == []
    big = [f"gpu{i:03d}" for i in range(1, 41)]
    chosen = {n: set(peer_probe.choose_peers(big, n, 6)) for n in big}
    assert all(len(c) == 6 for c in chosen.values())
    assert chosen["gpu001"] == {"gpu002", "gpu003", "gpu004", "gpu040", "gpu039", "gpu038"}
    for node, peers in chosen.items():
        for peer in peers:
            assert node in chosen[peer], (node, peer)


# --------------------------------------------------------------------------------- verdicts


def report(kinds, alive=None, **kw):
    return peer_probe.ProbeReport(
        peers={p: peer_probe.Outcome(k) for p, k in kinds.items()},
        control_alive=alive or {},
        elapsed_s=0.2,
        **kw,
    )


def test_judge_all_reached():
    got = judge(report({"n2": "ok", "n3": "inbound", "n4": "refused"}), "10.0.0.1", 2, False)
    assert got.status == "PASS"
    assert got.message == "reached 3 of 3 peers in 0.2s"
    assert got.values["peers"]["n4"] == "refused"


def test_judge_one_silent_peer_is_a_warning_naming_it():
    got = judge(report({"n2": "ok", "n3": "timeout"}), "10.0.0.1", 2, True)
    assert got.status == "WARN"
    assert got.message.startswith("no answer from n3 (timeout) within 0.2s; reached 1 of 2")


def test_judge_none_reached_fails_only_when_peers_are_known_up():
    silent = {"n2": "timeout", "n3": "timeout", "n4": "unreachable"}
    up = {"n2": True, "n3": True, "n4": False}
    got = judge(report(silent, up), "10.0.0.1", 2, True)
    assert got.status == "FAIL"
    assert got.message == (
        "reached none of 3 peers over the fabric within 0.2s, "
        "though 2 answer on the control network"
    )
    assert judge(report(silent, up), "10.0.0.1", 3, True).status == "WARN"
    no_control = judge(report(silent), "10.0.0.1", 2, False)
    assert no_control.status == "WARN"
    assert "no control network" in no_control.message
    two_node = judge(report({"n2": "timeout"}, {"n2": True}), "10.0.0.1", 2, True)
    assert two_node.status == "WARN"


def test_judge_own_address_missing_and_unresolved_peers():
    got = judge(report({}, own_address_missing=True), "10.0.0.1", 2, False)
    assert got.status == "ERROR"
    got = judge(report({"n2": "ok", "n3": "unresolved"}), "10.0.0.1", 2, False)
    assert got.status == "WARN"
    assert "no fabric address for n3" in got.message


# ------------------------------------------------------------------------ probe on loopback


def run_node(node, nodelist, port, results, **options):
    ctx = make_ctx(
        phase="prolog",
        options=options_of(
            CHECK,
            **{
                "address_template": "127.0.0.{num}",
                "port": port,
                "deadline_s": 3.0,
                **options,
            },
        ),
        job=JobInfo(job_id="77", nodelist=nodelist),
    )
    ctx = type(ctx)(**{**ctx.__dict__, "node": node})
    results[node] = list(CHECK.func(ctx))


def run_nodes(nodes, nodelist, port, **options):
    results = {}
    threads = [
        threading.Thread(target=run_node, args=(n, nodelist, port, results), kwargs=options)
        for n in nodes
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)  # far past any deadline_s here: a check still running ignored its own
    assert not [t for t in threads if t.is_alive()], "a peer probe outlived its deadline"
    return results


def test_all_peers_probing_each_other_pass_quickly():
    port = free_port()
    got = run_nodes(["n11", "n12", "n13"], "n[11-13]", port)
    for node, [result] in got.items():
        assert result.status is Status.PASS, (node, result)
        assert result.message.startswith("reached 2 of 2 peers")
        assert result.component == f"127.0.0.{node[1:]}"
        # "answered": connected, but that peer had finished and closed its listener.
        assert set(result.values["peers"].values()) <= {"ok", "inbound", "refused", "answered"}


def test_peer_without_probe_refuses_and_still_counts_as_reached():
    port = free_port()
    got = run_nodes(["n21"], "n[21-22]", port)
    [result] = got["n21"]
    assert result.status is Status.PASS
    assert result.values["peers"] == {"n22": "refused"}


def test_silent_peer_is_a_warning_and_the_deadline_holds():
    port = free_port()
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.33", port))
    black_hole.listen(0)
    filler = socket.create_connection(("127.0.0.33", port), timeout=1)
    try:
        got = run_nodes(["n31", "n32"], "n[31-33]", port, deadline_s=2.0)
    finally:
        filler.close()
        black_hole.close()
    for node in ("n31", "n32"):
        [result] = got[node]
        assert result.status is Status.WARN, result
        assert result.message.startswith("no answer from n33 (timeout)")
        assert result.values["peers"]["n33"] == "timeout"


def test_own_address_not_on_this_node_is_an_error_and_sends_nothing():
    [result] = run_nodes(
        ["n1"], "n[1-2]", free_port(), addresses={"n1": "192.0.2.1", "n2": "127.0.0.2"}
    )["n1"]
    assert result.status is Status.ERROR
    assert "192.0.2.1 is not on this node" in result.message


def test_unresolvable_peer(monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    port = free_port()
    got = run_nodes(["n41"], "n[41-42]", port, addresses={"n42": "n42.example"})
    [result] = got["n41"]
    assert result.status is Status.WARN
    assert "no fabric address for n42" in result.message


@pytest.mark.parametrize(
    ("nodelist", "status"), [(None, Status.SKIP), ("n1", Status.SKIP), ("n[5-6]", Status.SKIP)]
)
def test_skips(nodelist, status):
    ctx = make_ctx(options=options_of(CHECK), job=JobInfo(job_id="1", nodelist=nodelist))
    [result] = CHECK.func(ctx)
    assert result.status is status


def test_bad_options():
    ctx = make_ctx(options=options_of(CHECK, port=0, deadline_s=0), job=JobInfo(nodelist="n[1-2]"))
    [result] = CHECK.func(ctx)
    assert result.status is Status.ERROR
    assert "port must be" in result.message and "deadline_s" in result.message


def test_listener_ignores_garbage_and_answers_hellos():
    port = free_port()
    sock = peer_probe._open_listener(socket.AF_INET, "127.0.0.51", port)
    listener = peer_probe._Listener(sock, "n51", "9", {"n52"})
    listener.thread.start()
    try:
        with socket.create_connection(("127.0.0.51", port), timeout=2) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert c.recv(100) == b""
        with socket.create_connection(("127.0.0.51", port), timeout=2) as c:
            c.sendall(b"NCPEER1 9 n52\n")
            assert c.recv(100) == b"NCPEER1 9 n51 ok\n"
        assert listener.reached_us("n52")
    finally:
        listener.stop.set()
        sock.close()


def test_control_network_is_not_asked_when_the_fabric_answers():
    port = free_port()
    got = run_nodes(["n61", "n62"], "n[61-62]", port, control_template="127.0.1.{num}")
    for [result] in got.values():
        assert result.status is Status.PASS
        assert "control_alive" not in result.values


def test_silent_peer_known_up_on_control_network_with_one_peer_is_still_a_warning():
    port = free_port()
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.72", port))
    black_hole.listen(0)
    filler = socket.create_connection(("127.0.0.72", port), timeout=1)
    try:
        got = run_nodes(["n71"], "n[71-72]", port, deadline_s=2.0, control_template="127.0.1.{num}")
    finally:
        filler.close()
        black_hole.close()
    [result] = got["n71"]
    assert result.status is Status.WARN
    assert result.values["control_alive"] == {"n72": True}  # 127.0.1.72 refuses: alive
    assert "too few peers known up" in result.message
