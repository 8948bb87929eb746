"""The job-start fabric preflight: the allocation's nodes meet, measure ring neighbours over
the fabric with plain sockets, re-pair suspects with cleared nodes, and agree on one verdict.

Every node of a multi-node job runs this in its prolog (PrologFlags=Alloc starts them all at
allocation). The first node of the sorted node list coordinates:

    every node    listens on its fabric address (port + job id mod port_span) and serves
                  authenticated pair sessions (preflight_wire: per-job key, both sides prove it)
    members       connect to the coordinator (retrying while its prolog starts) and join
    coordinator   waits `join_s` at most for every node; then, round by round (ringplan), tells
                  the lower rank of each pair to measure the other, and gathers the figures;
                  classifies, runs the second pass, judges (with the `Judging` the check
                  hands in: checks/fabric/preflight_judge.py) and sends each node its own
                  verdict
    each node     returns only its own verdict: nobody judges a node from its own figures

A pair session measures, from the lower rank: latency (small ping-pongs, half the median
round trip) and bandwidth both ways (a framed bulk stream; the sender's clock runs until the
receiver acknowledges the last byte, so the figure is the transfer, not the enqueue: with a
small send buffer only a few hundred kB can be in flight when the clock stops).

Everything is bounded: joining by `join_s`, the coordinator's schedule by `measure_s` after
the join window, every socket call by the run's deadline; a hung or silent peer is an
incomplete preflight (WARN), never a hung prolog.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nodecheck.probes.fabric import preflight_wire as wire
from nodecheck.probes.fabric.listener import Listener, open_socket
from nodecheck.probes.fabric.ringplan import (
    Pair,
    PairPlan,
    classify,
    ring_rounds,
    second_pass_rounds,
)

SNDBUF = 128 * 1024  # the kernel doubles it: ~256 kB may be in flight when a clock stops
PING_BYTES = 8
HANDSHAKE_S = 2.0
VERDICT_RESERVE_S = 0.3  # the coordinator's time to send every node its verdict
THREAD_STACK = 512 * 1024  # socket calls only: see run()


@dataclass(frozen=True)
class Setup:
    """One node's part in one job's preflight (the same on every node but `me`)."""

    me: str
    nodes: tuple[str, ...]  # sorted: the first coordinates
    job: str
    key: bytes  # the job's key (preflight_wire.job_key)
    addresses: dict[str, tuple[int, str]]  # node -> (family, fabric address)
    port: int
    join_s: float = 3.0
    measure_s: float = 5.0
    max_bytes: int = 8 << 20
    transfer_s: float = 0.25
    pings: int = 20
    repeats: int = 2  # transfers each way; the best counts
    fraction: float = 0.25
    min_bps: float = 0.0

    @property
    def coordinator(self) -> str:
        return self.nodes[0]


@dataclass(frozen=True)
class PairFigure:
    """One pair's measurement: bytes/s each way (the lower rank sending first) and latency."""

    forward_bps: float = 0.0
    backward_bps: float = 0.0
    latency_us: float = 0.0
    error: str = ""  # not measured, and why

    @property
    def bps(self) -> float:
        """The pair's figure: its slower direction (a slow link may be slow one way only)."""
        return min(self.forward_bps, self.backward_bps)


@dataclass(frozen=True)
class NodeVerdict:
    """One node's verdict as the wire carries it ({"op": "verdict", "status", "message",
    "values"}). This module only passes it on: `Judging` makes every one of them."""

    status: str  # a Status name, decided by the check's Judging
    message: str
    values: dict[str, Any] = field(default_factory=dict)


# The coordinator's verdicts: (nodes, joined, pass 1, pass 2, fraction, min_bps) -> node's.
Judge = Callable[
    [list[str], set[str], dict[Pair, PairFigure], dict[Pair, PairFigure], float, float],
    dict[str, NodeVerdict],
]


@dataclass(frozen=True)
class Judging:
    """The verdicts, handed in by the check that runs the preflight: checks are a layer
    above probes, so this module measures and carries verdicts but never decides one.
    `judge` is the coordinator's one verdict for every node from all pairs' figures;
    `incomplete` is this node's own when the preflight could not finish (why it did not)."""

    judge: Judge
    incomplete: Callable[[str], NodeVerdict]


def plan_of(pass1: dict[Pair, float], fraction: float, world: int) -> PairPlan:
    """Pass 1 classified: which pairs the second pass measures (and, in the check's judge,
    the same reading). Three nodes have three pairs, and a slow node slows two of them:
    the upper median would be the slow figure, so there the fastest pair is the healthy one.
    From four nodes on, a slow node slows two ring pairs of at least four: the upper median."""
    reference = max(pass1.values(), default=0.0) if world == 3 else None
    return classify(pass1, fraction, reference)


@dataclass(frozen=True)
class Outcome:
    verdict: NodeVerdict
    role: str  # "coordinator" | "member"
    elapsed_s: float
    listen_error: str = ""
    own_address_missing: bool = False
    joined_s: float = 0.0  # when this node had joined (the coordinator: everyone had)


# ----------------------------------------------------------------------------- the listener


class _Server(Listener):
    """Serves pair sessions; on the coordinator also hands joining members' channels over."""

    def __init__(self, sock: socket.socket, setup: Setup, deadline: Callable[[], float]) -> None:
        super().__init__(sock, handlers=len(setup.nodes) + 16, name="preflight:listen")
        self.setup, self.deadline = setup, deadline
        self.joins: queue.Queue[wire.Channel] = queue.Queue()

    def answer(self, conn: socket.socket) -> None:
        keep = False
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            until = min(self.deadline(), time.monotonic() + HANDSHAKE_S)
            channel = wire.server_handshake(conn, self.setup.key, self.setup.me, until)
            if channel.peer not in self.setup.nodes or channel.peer == self.setup.me:
                return
            first = channel.recv(until)
            if first.get("op") == "join" and self.setup.me == self.setup.coordinator:
                self.joins.put(channel)
                keep = True  # the coordinator owns it now
            elif first.get("op") == "pair":
                serve_pair(channel, self.setup, self.deadline())
        except (wire.WireError, OSError, ValueError):
            pass  # a stranger, a wrong key, a peer gone: nothing of ours to judge here
        finally:
            if not keep:
                conn.close()


def _connect(setup: Setup, peer: str, deadline: float) -> socket.socket:
    family, address = setup.addresses[peer]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((setup.addresses[setup.me][1], 0))  # from our fabric address, over the fabric
        sock.settimeout(max(0.01, min(1.0, deadline - time.monotonic())))
        sock.connect((address, setup.port))
    except BaseException:
        sock.close()
        raise
    return sock


# ------------------------------------------------------------------------------ pair session


def serve_pair(channel: wire.Channel, setup: Setup, deadline: float) -> None:
    """The measured side of a pair session: echo pings, swallow and return bulk streams."""
    while True:
        msg = channel.recv(deadline)
        op = msg.get("op")
        if op == "ping":
            for _ in range(min(int(msg.get("n", 0)), 1000)):
                data = channel.read_exact(PING_BYTES, deadline)
                channel.sock.sendall(data)
        elif op == "push":
            channel.send({"got": channel.recv_bulk(deadline)}, deadline)
        elif op == "pull":
            channel.send_bulk(setup.max_bytes, setup.transfer_s, deadline)
        else:
            return


def measure(setup: Setup, peer: str, deadline: float) -> PairFigure:
    """Latency and bandwidth both ways between this node and `peer` (this node sends first)."""
    try:
        sock = _connect(setup, peer, deadline)
    except OSError as exc:
        return PairFigure(error=f"connect to {peer}: {exc.strerror or exc}")
    try:
        channel = wire.client_handshake(sock, setup.key, setup.me, peer, deadline)
        channel.send({"op": "pair"}, deadline)
        channel.send({"op": "ping", "n": setup.pings}, deadline)
        rtts = []
        probe = b"\x5a" * PING_BYTES
        for _ in range(setup.pings):
            started = time.perf_counter()
            sock.sendall(probe)
            channel.read_exact(PING_BYTES, deadline)
            rtts.append(time.perf_counter() - started)
        forward = backward = 0.0
        # Best of `repeats` each way: a moment's CPU contention on either host lowers one
        # transfer, not the link. A transfer cut by transfer_s ran long enough to stand: no
        # repeat (a slow link costs its transfer_s once per direction).
        for _ in range(setup.repeats):
            channel.send({"op": "push"}, deadline)
            started = time.perf_counter()
            sent = channel.send_bulk(setup.max_bytes, setup.transfer_s, deadline)
            got = int(channel.recv(deadline).get("got", 0))  # the receiver has every byte now
            forward = max(forward, got / max(time.perf_counter() - started, 1e-9))
            if sent < setup.max_bytes:
                break
        for _ in range(setup.repeats):
            channel.send({"op": "pull"}, deadline)
            started = time.perf_counter()
            got = channel.recv_bulk(deadline)
            backward = max(backward, got / max(time.perf_counter() - started, 1e-9))
            if got < setup.max_bytes:
                break
        channel.send({"op": "bye"}, deadline)
        latency = sorted(rtts)[len(rtts) // 2] / 2 * 1e6 if rtts else 0.0  # (upper) median
        return PairFigure(forward, backward, latency)
    except (wire.WireError, OSError, ValueError, TypeError) as exc:
        return PairFigure(error=f"with {peer}: {exc}")
    finally:
        sock.close()


# ----------------------------------------------------------------------------- the roles


def run(setup: Setup, judging: Judging) -> Outcome:
    """This node's part; returns within join_s + measure_s (+ join_s for a member). The
    verdicts are `judging`'s: the coordinator's for everyone, or this node's incomplete."""
    started = time.monotonic()
    me_is_coordinator = setup.me == setup.coordinator
    role = "coordinator" if me_is_coordinator else "member"
    limits = {"deadline": started + setup.join_s + setup.measure_s}
    family, address = setup.addresses[setup.me]
    try:
        # No SO_REUSEPORT: a second job's preflight on this node must not share our accepts.
        sock = open_socket(family, address, setup.port, backlog=128, sndbuf=SNDBUF)
    except OSError as exc:
        missing = exc.errno == errno.EADDRNOTAVAIL
        why = f"cannot listen on {address} port {setup.port}: {exc.strerror or exc}"
        verdict = judging.incomplete(why)
        return Outcome(verdict, role, _since(started), why, own_address_missing=missing)
    # One thread per pair of a round and per pair session: with 8 MiB stacks a big job's
    # coordinator would reserve more address space than a probe child may have
    # (probe_memory_mb). Our threads only do socket calls: small stacks do.
    stack = threading.stack_size(THREAD_STACK)
    server = _Server(sock, setup, lambda: limits["deadline"])
    server.thread.start()
    try:
        if me_is_coordinator:
            verdict = _coordinate(setup, judging.judge, server, started, limits)
        else:
            verdict = _member(setup, judging.incomplete, started, limits)
    finally:
        server.close()
        threading.stack_size(stack)
    joined = round(limits.get("joined", started) - started, 3)
    return Outcome(verdict, role, _since(started), joined_s=joined)


def _member(
    setup: Setup,
    incomplete: Callable[[str], NodeVerdict],
    started: float,
    limits: dict[str, float],
) -> NodeVerdict:
    join_until = started + setup.join_s
    coordinator = setup.coordinator
    channel, last = None, "no answer"
    while channel is None and time.monotonic() < join_until:
        try:
            sock = _connect(setup, coordinator, join_until)
        except ConnectionRefusedError:
            last = "connection refused"  # its prolog is not listening yet
            time.sleep(0.05)
            continue
        except OSError as exc:
            last = exc.strerror or str(exc)
            time.sleep(0.05)
            continue
        try:
            channel = wire.client_handshake(
                sock, setup.key, setup.me, coordinator, min(join_until, time.monotonic() + 2)
            )
            channel.send({"op": "join"}, join_until)
        except (wire.WireError, OSError) as exc:
            sock.close()
            channel, last = None, str(exc)
            time.sleep(0.05)
    if channel is None:
        return incomplete(f"coordinator {coordinator} not reached ({last})")
    # The coordinator may still wait join_s for others after we joined, then measure.
    limits["joined"] = time.monotonic()
    limits["deadline"] = time.monotonic() + setup.join_s + setup.measure_s
    try:
        while True:
            msg = channel.recv(limits["deadline"])
            if msg.get("op") == "measure":
                peer = str(msg.get("peer"))
                within = float(msg.get("within_s") or 0)
                until = min(limits["deadline"], time.monotonic() + within)
                fig = (
                    measure(setup, peer, until)
                    if peer in setup.nodes and peer != setup.me
                    else PairFigure(error=f"unknown peer {peer}")
                )
                channel.send({"op": "result", **_fig_out(fig)}, limits["deadline"])
            elif msg.get("op") == "verdict":
                return NodeVerdict(
                    str(msg["status"]), str(msg["message"]), dict(msg.get("values") or {})
                )
    except (wire.WireError, OSError, KeyError, ValueError) as exc:
        return incomplete(f"no verdict from {coordinator} ({exc})")
    finally:
        channel.sock.close()


def _coordinate(
    setup: Setup, judge: Judge, server: _Server, started: float, limits: dict[str, float]
) -> NodeVerdict:
    others = set(setup.nodes) - {setup.me}
    members: dict[str, wire.Channel] = {}
    join_until = started + setup.join_s
    while set(members) != others:
        try:
            channel = server.joins.get(timeout=max(0.0, join_until - time.monotonic()))
        except queue.Empty:
            break
        old = members.get(channel.peer)
        if old is not None:
            old.sock.close()
        members[channel.peer] = channel
    limits["joined"] = time.monotonic()
    deadline = time.monotonic() + setup.measure_s
    limits["deadline"] = deadline
    nodes = list(setup.nodes)
    joined = {setup.me, *members}
    try:
        pass1: dict[Pair, PairFigure] = {}
        pass2: dict[Pair, PairFigure] = {}
        if joined == set(nodes):
            work_until = deadline - VERDICT_RESERVE_S
            for pairs in ring_rounds(len(nodes)):
                pass1.update(_round(setup, members, pairs, work_until))
            if len(nodes) > 2 and not any(f.error for f in pass1.values()):
                plan = plan_of({p: f.bps for p, f in pass1.items()}, setup.fraction, len(nodes))
                for pairs in second_pass_rounds(plan) if plan.slow else []:
                    pass2.update(_round(setup, members, pairs, work_until))
        verdicts = judge(nodes, joined, pass1, pass2, setup.fraction, setup.min_bps)
        for node, channel in members.items():
            verdict = verdicts[node]
            with contextlib.suppress(wire.WireError, OSError):
                channel.send(
                    {"op": "verdict", "status": verdict.status, "message": verdict.message,
                     "values": verdict.values},
                    deadline,
                )  # fmt: skip
        return verdicts[setup.me]
    finally:
        for channel in members.values():
            channel.sock.close()


def _round(
    setup: Setup, members: dict[str, wire.Channel], pairs: list[Pair], until: float
) -> dict[Pair, PairFigure]:
    """One round: the lower rank of each pair measures the other, all pairs at once."""
    out: dict[Pair, PairFigure] = {}
    lock = threading.Lock()

    def one(pair: Pair) -> None:
        client, peer = setup.nodes[pair[0]], setup.nodes[pair[1]]
        if time.monotonic() >= until:
            fig = PairFigure(error="out of time")
        elif client == setup.me:
            fig = measure(setup, peer, until)
        else:
            try:
                channel = members[client]
                within = round(until - time.monotonic(), 3)
                channel.send({"op": "measure", "peer": peer, "within_s": within}, until)
                fig = _fig_in(channel.recv(until))
            except (wire.WireError, OSError, KeyError, ValueError, TypeError) as exc:
                fig = PairFigure(error=f"{client} did not report: {exc}")
        with lock:
            out[pair] = fig

    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in pairs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, until - time.monotonic()) + 0.5)
    with lock:
        return {p: out.get(p, PairFigure(error="no result in time")) for p in pairs}


def _fig_out(fig: PairFigure) -> dict[str, object]:
    return {"fwd": fig.forward_bps, "back": fig.backward_bps, "lat": fig.latency_us,
            "error": fig.error}  # fmt: skip


def _fig_in(msg: dict[str, object]) -> PairFigure:
    if msg.get("op") != "result":
        raise ValueError("not a result")
    return PairFigure(
        float(msg["fwd"]),  # type: ignore[arg-type]
        float(msg["back"]),  # type: ignore[arg-type]
        float(msg["lat"]),  # type: ignore[arg-type]
        str(msg.get("error") or ""),
    )


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
