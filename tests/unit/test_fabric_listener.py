"""The fabric probes' shared accept loop: one thread per connection, bounded, stoppable."""

from __future__ import annotations

import socket
import threading

from nodecheck.probes.fabric.listener import ACCEPT_WAKE_S, Listener, open_socket


class _Echo(Listener):
    """Answers one line back; holds each connection until `release` is set."""

    def __init__(self, sock: socket.socket, handlers: int) -> None:
        super().__init__(sock, handlers=handlers, name="test:listen")
        self.release = threading.Event()
        self.served = 0

    def answer(self, conn: socket.socket) -> None:
        with conn:
            line = conn.recv(100)
            self.served += 1  # before the answer: the client reads `served` once answered
            conn.sendall(line)
            self.release.wait(5)


def _listening() -> socket.socket:
    return open_socket(socket.AF_INET, "127.0.0.1", 0, backlog=16)


def test_answers_each_connection_and_drops_a_flood_beyond_its_handlers():
    sock = _listening()
    listener = _Echo(sock, handlers=1)
    listener.thread.start()
    port = sock.getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as first:
            first.sendall(b"one\n")
            assert first.recv(100) == b"one\n"  # its handler now holds the only slot
            with socket.create_connection(("127.0.0.1", port), timeout=2) as second:
                assert second.recv(100) == b""  # closed unanswered (nothing sent: no RST)
            listener.release.set()
        assert listener.handlers.acquire(timeout=2)  # the first handler has ended
        listener.handlers.release()
        with socket.create_connection(("127.0.0.1", port), timeout=2) as third:
            third.sendall(b"three\n")  # the slot came back when the first handler ended
            assert third.recv(100) == b"three\n"
        assert listener.served == 2
    finally:
        listener.release.set()
        listener.close()
    listener.thread.join(2)
    assert not listener.thread.is_alive()


def test_close_ends_the_accept_loop_without_a_connection():
    listener = _Echo(_listening(), handlers=4)
    listener.thread.start()
    listener.close()
    listener.thread.join(2)
    assert not listener.thread.is_alive()


def test_open_socket_listens_with_the_wake_up_timeout_and_its_options():
    sock = open_socket(socket.AF_INET, "127.0.0.1", 0, backlog=4, reuse_port=True, sndbuf=65536)
    with sock:
        assert sock.gettimeout() == ACCEPT_WAKE_S
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 65536
        if hasattr(socket, "SO_REUSEPORT"):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        with socket.create_connection(sock.getsockname(), timeout=2):
            pass


def test_open_socket_closes_what_it_cannot_bind():
    with open_socket(socket.AF_INET, "127.0.0.1", 0, backlog=4) as taken:
        try:
            open_socket(socket.AF_INET, "127.0.0.1", taken.getsockname()[1], backlog=4)
        except OSError as exc:
            assert exc.errno is not None
        else:
            raise AssertionError("bound a port already listening without SO_REUSEPORT")
