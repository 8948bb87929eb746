"""The preflight's wire: a per-job key, a mutual handshake, authenticated message lines and
the framed bulk stream the bandwidth figures are timed on.

Authentication rests on nothing a user's process can write: the per-job key is an HMAC of
the job id (from slurmd's prolog environment) under a root-only key every node already has
(Slurm's munge key by default, or a site key file). A peer proves it knows the job's key on
every connection (challenge and answer both ways, fresh nonces), and every message line after
that carries an HMAC under a session key of the two nonces, with a sequence number and a
direction, so a line cannot be replayed, reordered or reflected. The bulk bytes themselves
are only counted, never trusted: a figure is the only thing they make.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

MAGIC = b"NCPF1"
MAX_LINE = 64 * 1024  # a verdict line for one node, or a result: far below this
CHUNK = 256 * 1024
_LEN = struct.Struct("!I")


class WireError(Exception):
    """The peer broke the protocol, failed authentication, or went quiet past the deadline."""


class RootKeyError(Exception):
    """The root key cannot be used (missing, unreadable, readable by others)."""


def read_root_key(path: Path) -> bytes:
    """The site's root-only key. A key others may read is no secret: refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise RootKeyError(f"key file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if info.st_mode & 0o077:
            raise RootKeyError(
                f"key file {path} is readable or writable by others (mode {info.st_mode & 0o777:o})"
            )
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    if len(data) < 16:
        raise RootKeyError(f"key file {path} holds {len(data)} bytes, too short for a key")
    return data


def job_key(root_key: bytes, job_id: str) -> bytes:
    """The job's key: only holders of the root key can compute it; it differs per job."""
    return hmac.new(
        root_key, b"nodecheck-preflight-v1\0" + job_id.encode(), hashlib.sha256
    ).digest()


def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, "|".join(parts).encode(), hashlib.sha256).hexdigest()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise WireError("deadline passed")
    return left


def recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        sock.settimeout(_left(deadline))
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except TimeoutError:
            raise WireError("peer went quiet") from None
        if not chunk:
            raise WireError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def _recv_line(sock: socket.socket, deadline: float, pending: bytearray) -> bytes:
    while b"\n" not in pending:
        if len(pending) > MAX_LINE:
            raise WireError("line too long")
        sock.settimeout(_left(deadline))
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            raise WireError("peer went quiet") from None
        if not chunk:
            raise WireError("peer closed the connection")
        pending += chunk
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return line


class Channel:
    """One authenticated connection. `role` is "c" (the side that connected) or "s"."""

    def __init__(self, sock: socket.socket, session: bytes, role: str, peer: str) -> None:
        self.sock, self.session, self.role, self.peer = sock, session, role, peer
        self._sent = 0
        self._got = 0
        self._pending = bytearray()

    def send(self, body: dict[str, Any], deadline: float) -> None:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        mac = _mac(self.session, self.role, str(self._sent), text)
        line = json.dumps({"b": text, "s": self._sent, "m": mac}).encode() + b"\n"
        if len(line) > MAX_LINE:
            raise WireError("message too long")
        self._sent += 1
        self.sock.settimeout(_left(deadline))
        try:
            self.sock.sendall(line)
        except TimeoutError:
            raise WireError("peer stopped reading") from None

    def recv(self, deadline: float) -> dict[str, Any]:
        raw = _recv_line(self.sock, deadline, self._pending)
        try:
            outer = json.loads(raw)
            text, seq, mac = outer["b"], outer["s"], outer["m"]
        except (ValueError, KeyError, TypeError):
            raise WireError("message not understood") from None
        other = "s" if self.role == "c" else "c"
        want = _mac(self.session, other, str(self._got), str(text))
        if seq != self._got or not hmac.compare_digest(str(mac), want):
            raise WireError("message failed authentication")
        self._got += 1
        body = json.loads(text)
        if not isinstance(body, dict):
            raise WireError("message not understood")
        return body

    def read_exact(self, n: int, deadline: float) -> bytes:
        """Raw bytes after a message line: what the line reader already took comes first."""
        head = bytes(self._pending[:n])
        del self._pending[:n]
        return head + recv_exact(self.sock, n - len(head), deadline) if len(head) < n else head

    # -- the bulk stream: length-prefixed chunks, a zero length ends it ---------------------

    def send_bulk(self, max_bytes: int, max_s: float, deadline: float) -> int:
        """Send up to max_bytes, stopping after max_s; returns the bytes sent."""
        frame = _LEN.pack(CHUNK) + b"\xa5" * CHUNK  # built once: the loop only sends
        sent = 0
        stop = min(deadline, time.monotonic() + max_s)
        while sent < max_bytes and time.monotonic() < stop:
            size = min(CHUNK, max_bytes - sent)
            self.sock.settimeout(_left(deadline))
            try:
                if size == CHUNK:
                    self.sock.sendall(frame)
                else:
                    self.sock.sendall(_LEN.pack(size) + frame[_LEN.size : _LEN.size + size])
            except TimeoutError:
                raise WireError("bulk send stalled") from None
            sent += size
        self.sock.settimeout(_left(deadline))
        self.sock.sendall(_LEN.pack(0))
        return sent

    def recv_bulk(self, deadline: float) -> int:
        """Read a bulk stream to its end; returns the bytes received (counted, not kept)."""
        got = 0
        sink = memoryview(bytearray(CHUNK))
        while True:
            (size,) = _LEN.unpack(self.read_exact(_LEN.size, deadline))
            if size == 0:
                return got
            if size > CHUNK:
                raise WireError("bulk chunk too large")
            head = self.read_exact(min(size, len(self._pending)), deadline)
            left = size - len(head)
            while left:
                self.sock.settimeout(_left(deadline))
                try:
                    n = self.sock.recv_into(sink[:left])
                except TimeoutError:
                    raise WireError("peer went quiet") from None
                if not n:
                    raise WireError("peer closed the connection")
                left -= n
            got += size


def client_handshake(
    sock: socket.socket, key: bytes, me: str, expect: str, deadline: float
) -> Channel:
    """Prove to the server that we hold the job's key, and make it prove the same."""
    pending = bytearray()
    greeting = _recv_line(sock, deadline, pending).split()
    if len(greeting) != 2 or greeting[0] != MAGIC:
        raise WireError("not a preflight listener")
    nonce_s = greeting[1].decode("ascii", "replace")
    nonce_c = os.urandom(16).hex()
    hello = {"node": me, "nonce": nonce_c, "mac": _mac(key, "hello", nonce_s, nonce_c, me)}
    sock.settimeout(_left(deadline))
    sock.sendall(json.dumps(hello).encode() + b"\n")
    try:
        ack = json.loads(_recv_line(sock, deadline, pending))
        node, mac = str(ack["node"]), str(ack["mac"])
    except (ValueError, KeyError, TypeError):
        raise WireError("handshake answer not understood") from None
    if not hmac.compare_digest(mac, _mac(key, "ack", nonce_c, nonce_s, node)):
        raise WireError("listener does not hold this job's key")
    if node != expect:
        raise WireError(f"answered as {node}")
    channel = Channel(sock, _session(key, nonce_s, nonce_c), "c", node)
    channel._pending = pending
    return channel


def server_handshake(sock: socket.socket, key: bytes, me: str, deadline: float) -> Channel:
    """Challenge a connecting peer; only one that holds the job's key gets a channel."""
    nonce_s = os.urandom(16).hex()
    sock.settimeout(_left(deadline))
    sock.sendall(MAGIC + b" " + nonce_s.encode() + b"\n")
    pending = bytearray()
    try:
        hello = json.loads(_recv_line(sock, deadline, pending))
        node, nonce_c, mac = str(hello["node"]), str(hello["nonce"]), str(hello["mac"])
    except (ValueError, KeyError, TypeError):
        raise WireError("hello not understood") from None
    if len(nonce_c) != 32 or not hmac.compare_digest(
        mac, _mac(key, "hello", nonce_s, nonce_c, node)
    ):
        raise WireError("peer does not hold this job's key")
    ack = {"node": me, "mac": _mac(key, "ack", nonce_c, nonce_s, me)}
    sock.sendall(json.dumps(ack).encode() + b"\n")
    channel = Channel(sock, _session(key, nonce_s, nonce_c), "s", node)
    channel._pending = pending
    return channel


def _session(key: bytes, nonce_s: str, nonce_c: str) -> bytes:
    return hmac.new(key, f"session|{nonce_s}|{nonce_c}".encode(), hashlib.sha256).digest()
