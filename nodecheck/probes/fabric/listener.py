"""The accept loop the fabric probes share (peers' hello, the preflight's pair sessions).

A prolog must never hang on its own listener: accept() wakes up every few tens of ms (the
socket's timeout, set by whoever opened it) to notice `stop`, and every connection gets a
thread of its own so that one slow or silent peer holds up nobody else. The handlers are
bounded: a flood beyond them is closed unanswered (the peer still saw our SYN-ACK, which is
all the peer probe needs), instead of growing threads until the probe child's memory
limit ends the check.
"""

from __future__ import annotations

import contextlib
import socket
import threading

ACCEPT_WAKE_S = 0.05  # how often accept() wakes up to notice the stop flag


def open_socket(
    family: int,
    address: str,
    port: int,
    *,
    backlog: int,
    reuse_port: bool = False,
    sndbuf: int | None = None,
) -> socket.socket:
    """A TCP socket bound to `address`:`port` and listening, ready for a `Listener`."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            with contextlib.suppress(AttributeError, OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if sndbuf is not None:  # accepted sockets inherit it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.bind((address, port))
        sock.listen(backlog)
        sock.settimeout(ACCEPT_WAKE_S)
    except OSError:
        sock.close()
        raise
    return sock


class Listener:
    """Accepts on `sock` (from `open_socket`: its accept() times out) until stopped; a subclass
    answers each connection in `answer`, on a thread of its own, at most `handlers` at once.
    Start it with `thread.start()`, end it with `close()`."""

    def __init__(self, sock: socket.socket, handlers: int, name: str) -> None:
        self.sock = sock
        self.stop = threading.Event()
        self.handlers = threading.BoundedSemaphore(handlers)
        self.thread = threading.Thread(target=self._serve, daemon=True, name=name)

    def answer(self, conn: socket.socket) -> None:
        """Serve one accepted connection; the subclass decides whether it closes it."""
        raise NotImplementedError

    def close(self) -> None:
        self.stop.set()
        self.sock.close()  # an accept() under way fails with OSError: the loop ends

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            if not self.handlers.acquire(blocking=False):
                conn.close()  # flooded: drop it rather than grow threads without bound
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self.answer(conn)
        finally:
            self.handlers.release()
