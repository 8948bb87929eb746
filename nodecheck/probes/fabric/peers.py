"""The allocation-wide peer probe: can this node reach the other nodes of its job over the
fabric, within a deadline, without blaming itself for a peer that is merely slow?

Each node of a multi-node job runs this in its prolog (PrologFlags=Alloc starts the prologs
of all the job's nodes at allocation). For `deadline_s` at most it

- listens on its own fabric address, TCP `port`, answering a one-line hello;
- connects, from its fabric address, to each chosen peer's fabric address on that port.

What one attempt proves:
- hello answered (either direction: a peer that connected to us counts too) -> reached;
- connection refused -> reached: the peer's kernel answered with a RST over the fabric, the
  path works; the peer's prolog is just not listening (not started yet, or already done);
- connected, no or odd answer -> reached (something answered on that address);
- timeout / host or network unreachable -> silent: packets are lost somewhere between us.

Only silence is evidence of a fabric problem, and silence from one peer does not say whose
fault it is: for a silent peer the probe also asks whether it answers on the control
(management) network (`control`), so the check can tell a dead peer from a dead path of
ours. The probe only reports; the verdict is the check's (nodecheck/checks/fabric/peers.py).

Large jobs: each node probes at most `max_peers` peers, its ring neighbours in the sorted
node list (offsets +-1..+-max_peers/2), a symmetric choice: if A probes B, B probes A.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from nodecheck.core.bounded import call_all_with_deadline
from nodecheck.probes.fabric.listener import Listener, open_socket

MAGIC = "NCPEER1"
MAX_LINE = 256
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

REACHED = frozenset({"ok", "inbound", "refused", "wrong_node", "answered"})
SILENT = frozenset({"timeout", "unreachable", "error"})


# ---------------------------------------------------------------------------------- addresses


def node_address(node: str, template: str, table: dict[str, str]) -> str:
    """A node's address on a network: the table entry, else the template with {node} and
    {num} (the node name's trailing number, e.g. 12 for gpu012) filled in."""
    if node in table:
        return table[node]
    digits = re.search(r"(\d+)$", node)
    fields = {"node": node, "num": int(digits.group(1)) if digits else 0}
    try:
        return template.format_map(fields)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ValueError(f"template {template!r}: {exc}") from None


def resolve_all(hosts: Iterable[str], timeout_s: float) -> dict[str, tuple[int, str] | None]:
    """host -> (family, address), None when it does not resolve within the deadline."""
    out: dict[str, tuple[int, str] | None] = {}
    slow = {}
    for host in set(hosts):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            slow[host] = host
            continue
        out[host] = (socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))

    def lookup(host: str) -> tuple[int, str]:
        info = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        family, _, _, _, sockaddr = info[0]
        return family, str(sockaddr[0])

    got = call_all_with_deadline({h: (lambda h=h: lookup(h)) for h in slow}, timeout_s)
    for host, outcome in got.items():
        if outcome.error is not None and not isinstance(outcome.error, OSError):
            # our bug, not a name that does not resolve: the check reports it as an ERROR
            raise outcome.error
        out[host] = outcome.value if outcome.finished and outcome.error is None else None
    return out


def choose_peers(nodes: list[str], me: str, max_peers: int) -> list[str]:
    """All other nodes, or for big jobs this node's ring neighbours (symmetric choice)."""
    from nodecheck.probes.fabric.sysfs import natural_key

    ordered = sorted(set(nodes), key=natural_key)
    if me not in ordered:
        return []
    others = [n for n in ordered if n != me]
    if len(others) <= max_peers:
        return others
    i, size, half = ordered.index(me), len(ordered), max(1, max_peers // 2)
    chosen: list[str] = []
    for offset in range(1, half + 1):
        for j in (i + offset, i - offset):
            name = ordered[j % size]
            if name != me and name not in chosen:
                chosen.append(name)
    return chosen


# ------------------------------------------------------------------------------ the probe


@dataclass
class Outcome:
    kind: str  # one of REACHED | SILENT | {"unresolved", "pending"}
    detail: str = ""
    seconds: float = 0.0


@dataclass
class ProbeReport:
    peers: dict[str, Outcome]
    control_alive: dict[str, bool] = field(default_factory=dict)
    listen_error: str = ""
    own_address_missing: bool = False
    elapsed_s: float = 0.0


def _hello(job: str, node: str, ok: bool = False) -> bytes:
    return f"{MAGIC} {job} {node}{' ok' if ok else ''}\n".encode()


def _parse_hello(data: bytes) -> tuple[str, str] | None:
    line = data.split(b"\n", 1)[0].decode("ascii", errors="replace").split()
    if len(line) < 3 or line[0] != MAGIC or not _NODE.match(line[2]):
        return None
    return line[1], line[2]


def _recv_line(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while b"\n" not in data and len(data) < MAX_LINE:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        chunk = sock.recv(MAX_LINE - len(data))
        if not chunk:
            break
        data += chunk
    return data


class _Listener(Listener):
    """Answers hellos on our fabric address; records which peers reached us."""

    def __init__(self, sock: socket.socket, me: str, job: str, peers: set[str]) -> None:
        super().__init__(sock, handlers=16, name="peers:listen")
        self.me, self.job, self.peers = me, job, peers
        self.inbound: dict[str, float] = {}
        self.lock = threading.Lock()

    def answer(self, conn: socket.socket) -> None:
        try:
            with conn:
                hello = _parse_hello(_recv_line(conn, time.monotonic() + 1.0))
                if hello is None:
                    return
                _, node = hello
                if node in self.peers:  # its hello got here: the path works both ways
                    with self.lock:
                        self.inbound.setdefault(node, time.monotonic())
                conn.sendall(_hello(self.job, self.me, ok=True))
        except OSError:
            pass

    def reached_us(self, node: str) -> bool:
        with self.lock:
            return node in self.inbound


def _open_listener(family: int, address: str, port: int) -> socket.socket:
    return open_socket(family, address, port, backlog=64, reuse_port=True)


def _attempt(
    family: int, src: str | None, dst: str, port: int, deadline: float, job: str, me: str,
    peer: str,
) -> Outcome:  # fmt: skip
    """One connection attempt to `peer`; the Outcome says what it proved."""
    started = time.monotonic()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if src is not None:
            sock.bind((src, 0))
        sock.settimeout(max(0.01, min(1.0, deadline - started)))
        try:
            sock.connect((dst, port))
        except ConnectionRefusedError:
            return Outcome("refused", "host answered, probe not listening", _since(started))
        except TimeoutError:
            return Outcome("timeout", "no answer", _since(started))
        except OSError as exc:
            kind = "unreachable" if exc.errno in _UNREACHABLE else "error"
            return Outcome(kind, exc.strerror or str(exc), _since(started))
        try:
            sock.sendall(_hello(job, me))
            reply = _parse_hello(_recv_line(sock, min(deadline, time.monotonic() + 1.0)))
        except OSError:
            reply = None
        if reply is None:
            return Outcome("answered", "connected, no probe answer", _since(started))
        if reply[1] != peer:
            return Outcome("wrong_node", f"answered as {reply[1]}", _since(started))
        return Outcome("ok", "", _since(started))
    finally:
        sock.close()


_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def probe(
    me: str,
    job: str,
    own: tuple[int, str],
    peers: dict[str, tuple[int, str] | None],
    port: int,
    deadline_s: float,
    control: dict[str, tuple[int, str] | None] | None = None,
) -> ProbeReport:
    """Run the probe; returns within deadline_s (plus thread start-up slack)."""
    started = time.monotonic()
    deadline = started + deadline_s
    report = ProbeReport(peers={})
    listener = None
    try:
        sock = _open_listener(own[0], own[1], port)
    except OSError as exc:
        report.listen_error = exc.strerror or str(exc)
        report.own_address_missing = exc.errno == errno.EADDRNOTAVAIL
    else:
        listener = _Listener(sock, me, job, set(peers))
        listener.thread.start()
    if report.own_address_missing:
        return report  # no source address to probe from: that is the verdict
    outcomes: dict[str, Outcome] = {
        p: Outcome("pending") if a else Outcome("unresolved") for p, a in peers.items()
    }
    lock = threading.Lock()

    def record(peer: str, outcome: Outcome) -> None:
        with lock:
            outcomes[peer] = outcome

    def state_of(peer: str) -> str:
        with lock:
            return outcomes[peer].kind

    def work(peer: str, family: int, address: str) -> None:
        while time.monotonic() < deadline:
            if listener is not None and listener.reached_us(peer):
                record(peer, Outcome("inbound", "peer reached us", _since(started)))
                return
            got = _attempt(family, own[1], address, port, deadline, job, me, peer)
            record(peer, got)
            if got.kind in REACHED:
                return
            if got.kind != "timeout":
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        if listener is not None and listener.reached_us(peer):
            record(peer, Outcome("inbound", "peer reached us", _since(started)))

    alive: dict[str, bool] = {}

    def check_control(peer: str, family: int, address: str) -> None:
        """Only asked once the fabric attempt to this peer came back silent."""
        got = Outcome("timeout")
        while time.monotonic() < deadline and got.kind not in REACHED:
            kind = state_of(peer)
            if kind in REACHED:
                return  # no question to answer
            if kind == "pending":
                time.sleep(0.02)
                continue
            got = _attempt(family, None, address, port, deadline, job, me, peer)
            if got.kind != "timeout":
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        with lock:
            alive[peer] = got.kind in REACHED

    threads = [
        threading.Thread(target=work, args=(p, *a), daemon=True, name=f"peers:{p}")
        for p, a in peers.items()
        if a is not None
    ]
    for peer, addr in (control or {}).items():
        if addr is None:
            alive[peer] = False
        else:
            threads.append(threading.Thread(target=check_control, args=(peer, *addr), daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
    if listener is not None:
        listener.close()
    with lock:
        report.peers = {
            p: (o if o.kind != "pending" else Outcome("timeout", "no answer"))
            for p, o in outcomes.items()
        }
        report.control_alive = dict(alive)
    report.elapsed_s = round(time.monotonic() - started, 3)
    return report
