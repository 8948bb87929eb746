"""Hand one hook run to the nodecheck agent; run it in this process if the agent cannot.

The reference of the client's protocol, and the client the entrypoints run where the
compiled one (agent_client.c, built by `make install` and the Debian package) is not
there: `python -I -S .../agent_client.py --socket PATH PHASE`, only when the agent's socket
exists. `-S` (no site-packages) keeps this process at the cost of a bare interpreter: it
imports nothing that the interpreter has not loaded already at startup (not even json or
struct, which pull in `re` and cost more than the rest of this client), and never imports
nodecheck (docs/agent.md).

It connects to the agent, checks that the agent runs as our own user (root), waits for
the forked worker's "ready", sends the phase and this process's environment with our
stdout/stderr (SCM_RIGHTS), so the worker logs to slurmd exactly as an in-process run
would, and exits with the worker's exit code. If anything fails before the worker says it
started, or the worker ends without an exit code, it replaces itself with the in-process
run (`python -I -m nodecheck hook PHASE`), telling it why in NODECHECK_AGENT_UNAVAILABLE
(the hook logs it as agent_unavailable): the agent can make a job start faster, never less
safe.
"""

from __future__ import annotations

import os
import sys
import time
from _socket import (
    AF_UNIX,
    SCM_RIGHTS,
    SO_PEERCRED,
    SOCK_STREAM,
    SOL_SOCKET,
    socket,
)

PHASES = ("prolog", "epilog", "health")
DEFAULT_SOCKET = "/run/nodecheck/agent.sock"  # where the agent listens (and entrypoint.sh looks)
REQUEST_MAGIC = b"nodecheck-agent/1"
CONNECT_TIMEOUT_S = 1.0
# Accepting, forking and reading the request take milliseconds; an agent that says nothing
# for this long is hung (stopped, stuck), and waiting on it would hang the job start.
STARTED_TIMEOUT_S = 3.0
MAX_REPLY = 4096
# How a client that falls back tells the in-process run why (nodecheck.entry.hook logs it).
UNAVAILABLE_ENV = "NODECHECK_AGENT_UNAVAILABLE"
# ... and when the hook started (entry/hook.STARTED_ENV; not imported: this client loads
# nothing of nodecheck).
STARTED_ENV = "NODECHECK_HOOK_STARTED"


class AgentUnavailable(Exception):
    """Nothing ran in the agent: the in-process run takes over."""


class AgentNotRunning(AgentUnavailable):
    """Nobody listens on the socket (no agent, or one that died and left its socket)."""


def peer_credentials(sock: socket) -> tuple[int, int]:
    """The pid and uid of the process at the other end (SO_PEERCRED, set by the kernel).
    The agent reads its clients with this too."""
    creds = sock.getsockopt(SOL_SOCKET, SO_PEERCRED, 12)  # struct ucred: pid, uid, gid
    pid, uid = (int.from_bytes(creds[i : i + 4], sys.byteorder, signed=True) for i in (0, 4))
    return pid, uid


def request_bytes(phase: str, environ: dict[bytes, bytes]) -> bytes:
    """`nodecheck-agent/1 NUL phase NUL NAME=value NUL ...`: the environment in the form
    the kernel keeps it (names and values cannot contain NUL), no encoder needed."""
    entries = [name + b"=" + value for name, value in environ.items()]
    return b"\0".join([REQUEST_MAGIC, phase.encode(), *entries])


def run_in_agent(
    path: str,
    phase: str,
    environ: dict[bytes, bytes] | None = None,
    fds: tuple[int, int, int] = (0, 1, 2),
    reply_timeout_s: float | None = None,
) -> int:
    """The worker's exit code; AgentUnavailable if the run has to happen here instead.
    The worker runs with `environ` (ours by default) and `fds` as its stdin, stdout and
    stderr (ours by default); after "started" it is bounded by its own deadlines, or by
    `reply_timeout_s` when the caller cannot wait on those.

    Our stdout/stderr are sent only to a worker that has said "ready": descriptors queued
    at an agent that never accepts would keep slurmd's pipes open after we are gone."""
    sock = socket(AF_UNIX, SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(path)
        except OSError as exc:
            raise AgentNotRunning(f"cannot connect to {path}: {exc}") from None
        if peer_credentials(sock)[1] != os.geteuid():
            raise AgentUnavailable(f"{path} is served by another user")
        greeting, _ = _read_line(sock)
        if greeting != b"ready":
            why = greeting.decode(errors="replace") or "the agent closed the connection"
            raise AgentUnavailable(f"agent refused the run: {why}")
        sent = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)  # stdin/out/err
        try:
            request = request_bytes(phase, dict(os.environb) if environ is None else environ)
            sock.sendmsg([request], [(SOL_SOCKET, SCM_RIGHTS, sent)])
            sock.shutdown(1)  # SHUT_WR: the request is complete
        except OSError as exc:
            raise AgentUnavailable(f"cannot send the request: {exc}") from None
        started, reply = _read_line(sock)
        reply = started + b"\n" + reply
        # From "started" on, the worker's own deadlines bound the run, as in-process.
        sock.settimeout(reply_timeout_s)
        while len(reply) < MAX_REPLY:
            try:
                chunk = sock.recv(MAX_REPLY)
            except TimeoutError:
                raise AgentUnavailable(
                    f"no answer from the agent's worker in {reply_timeout_s:g} s"
                ) from None
            except OSError as exc:
                raise AgentUnavailable(f"lost the agent: {exc}") from None
            if not chunk:
                break
            reply += chunk
    finally:
        sock.close()
    return parse_reply(reply.decode(errors="replace"))


def _read_line(sock: socket) -> tuple[bytes, bytes]:
    """One line from the agent within STARTED_TIMEOUT_S, and what came after it; b"" at
    end of file. A silent agent is a hung one."""
    sock.settimeout(STARTED_TIMEOUT_S)
    data = b""
    while b"\n" not in data and len(data) < MAX_REPLY:
        try:
            chunk = sock.recv(MAX_REPLY)
        except TimeoutError:
            raise AgentUnavailable(
                f"no answer from the agent within {STARTED_TIMEOUT_S:g} s"
            ) from None
        except OSError as exc:
            raise AgentUnavailable(f"lost the agent: {exc}") from None
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line, rest


def parse_reply(reply: str) -> int:
    """`started\\nexit N\\n` from a worker that finished; anything else means no verdict."""
    lines = reply.split("\n")
    if lines[0] != "started":
        why = lines[0] or "the agent closed the connection"
        raise AgentUnavailable(f"agent refused the run: {why}")
    for line in lines[1:]:
        if line.startswith("exit ") and line[5:].isdigit():
            return int(line[5:])
    raise AgentUnavailable("the agent's worker ended without an exit code")


def run_here(phase: str, why: str, started: float) -> None:
    """Become the in-process run, telling it why the agent could not serve and when this
    hook started (its budget is what is left of ours: entry/hook.hook_started); does not
    return."""
    python = sys.executable or "/usr/bin/python3"
    os.environ[UNAVAILABLE_ENV] = why
    os.environ[STARTED_ENV] = repr(started)
    os.execv(python, [python, "-I", "-m", "nodecheck", "hook", phase])  # noqa: S606 (argv list)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "--socket" or argv[2] not in PHASES:
        print("usage: agent_client.py --socket PATH prolog|epilog|health", file=sys.stderr)
        return 2
    path, phase = argv[1], argv[2]
    started = time.monotonic()  # CLOCK_MONOTONIC: the in-process run reads the same clock
    try:
        return run_in_agent(path, phase)
    except AgentUnavailable as exc:
        run_here(phase, str(exc), started)
    return 2  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
