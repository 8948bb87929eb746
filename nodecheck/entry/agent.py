"""`nodecheck agent`: keep nodecheck loaded, fork one worker per hook run.

A prolog that starts a Python interpreter and imports nodecheck spends most of its time on
the imports, not on the checks (docs/performance.md). The agent does that once: it loads
every module a run can need, then waits on a Unix socket. For each connection from a
process of its own user (root) it forks a worker, which takes the client's stdout/stderr
and environment and runs exactly what `nodecheck hook PHASE` runs (nodecheck.entry.hook), then
reports the exit code. The client is nodecheck/entry/agent_client.py, started by the entrypoints
only when the socket exists; when the agent is absent, stale or broken, the client runs the
hook itself. See docs/agent.md for deployment.

Code changes on disk (an upgrade) make the agent stale: it turns the next request away,
so the client runs the new code in-process, and exits for its service manager to restart it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
from pathlib import Path

from nodecheck.core.codes import HOOK_PHASES
from nodecheck.entry.agent_client import DEFAULT_SOCKET, REQUEST_MAGIC, peer_credentials
from nodecheck.entry.agent_status import STATUS_PHASE
from nodecheck.entry.hook import HookArgs
from nodecheck.log import get_logger
from nodecheck.probes import kernlog
from nodecheck.run import pool, runner
from nodecheck.selftest.agent_request import SELFTEST_PHASE
from nodecheck.selftest.agent_side import Timer

MAX_REQUEST = 1 << 20  # the environment of a prolog is a few KiB
REQUEST_TIMEOUT_S = 5.0  # a client that connects and sends nothing does not hold a worker
STOP_WAIT_S = 60.0  # on stop, how long runs in progress may take to finish
PACKAGE = Path(__file__).resolve().parents[1]  # the whole nodecheck package

# Loaded once, so that a forked worker (and its probe children) import nothing.
WARM_MODULES = (
    "nodecheck.run.pipeline",
    "nodecheck.run.firstlook",
    "nodecheck.run.keeper",
    "nodecheck.checks.deep.judge",  # bound lazily by the deep family (checks/__init__.py)
    "nodecheck.probes.host",  # psutil, bound lazily by the host family
    "nodecheck.run.act",
    "nodecheck.run.gather",
    "nodecheck.run.record",
    "nodecheck.run.breaker",
    "nodecheck.store.history",
    "nodecheck.probes.jobscope",
    "nodecheck.probes.kernlog",
    "nodecheck.probes.nvml.model",
    "nodecheck.probes.nvml.replay",
    "nodecheck.probes.fabric.sysfs",
    "nodecheck.core.bounded",
    "nodecheck.slurm.scontrol",
    "nodecheck.checks.gpu.xid_verdict",  # gpu.xid, gpu.remap's recovery action, their tables
    "nodecheck.probes.xid_lines",
    "nodecheck.store.transaction",  # the checks that keep state (gpu.xid, gpu.nvlink, ib.counters)
    "nodecheck.quarantine.ladder",  # the hook's record step
    "nodecheck.run.pool",
)


THIRD_PARTY = ("pynvml", "prometheus_client")  # optional: loaded when installed
KERNEL_LOG = Path("/dev/kmsg")  # gpu.xid's default source, followed by the agent


class BadRequest(Exception):
    pass


def code_files(package: Path = PACKAGE, dependencies: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What the running code was loaded from, listed once at start: every module file of
    the package and the directories holding them (an upgrade that adds, removes or renames
    a file changes its directory), and the entry file of each third-party module we loaded."""
    modules = [str(path) for path in sorted(package.rglob("*.py"))]
    directories = sorted({os.path.dirname(path) for path in modules})
    return (*modules, *directories, *dependencies)


def code_stamp(files: tuple[str, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    """Size, mtime and inode of each of `files` (None for one that is gone): an upgrade on
    disk changes it. Only stats, no directory walk: it is taken before every run."""
    stamp: list[tuple[int, int, int] | None] = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            stamp.append(None)
            continue
        stamp.append((st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(stamp)


def dependency_files() -> tuple[str, ...]:
    """The files the warm third-party modules (pynvml, prometheus_client) came from."""
    found = []
    for name in THIRD_PARTY:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None) if module is not None else None
        if path:
            found.append(path)
    return tuple(found)


def warm_up() -> list[str]:
    """Import what runs need (and the check registry), and follow the kernel log (runs
    forked from here then do not read it from its start: nodecheck.probes.kernlog); returns
    what could not be loaded or followed."""
    import importlib

    from nodecheck.checks.registry import all_checks
    from nodecheck.probes.xid_lines import XID_MARKS

    all_checks()
    missing = []
    for name in (*WARM_MODULES, *THIRD_PARTY):
        try:
            module = importlib.import_module(name)
            getattr(module, "__name__", None)  # a lazily bound module loads on first access
        except ImportError:
            missing.append(name)
    try:
        kernlog.follow(KERNEL_LOG, XID_MARKS)
    except OSError as exc:
        missing.append(f"{KERNEL_LOG}: {exc.strerror or exc}")
    return missing


def read_request(conn: socket.socket) -> tuple[str, dict[str, str], list[int]]:
    """The phase, the environment and the client's stdin/stdout/stderr (in that order)."""
    conn.settimeout(REQUEST_TIMEOUT_S)
    data, fds = b"", []
    try:
        first, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 3)
        data = first
        while first and len(data) <= MAX_REQUEST:
            first = conn.recv(MAX_REQUEST)
            data += first
    except OSError as exc:
        _close_all(fds)
        raise BadRequest(f"reading the request: {exc}") from None
    try:
        if len(fds) != 3 or len(data) > MAX_REQUEST:
            raise BadRequest(f"expected 3 descriptors and at most {MAX_REQUEST} bytes")
        phase, env = parse_request(data)
    except BadRequest:
        _close_all(fds)
        raise
    return phase, env, fds


def parse_request(data: bytes) -> tuple[str, dict[str, str]]:
    """agent_client.request_bytes, read back: the phase and the client's environment
    (decoded the way Python decodes its own environ)."""
    magic, _, rest = data.partition(b"\0")
    if magic != REQUEST_MAGIC:
        raise BadRequest("not a nodecheck-agent/1 request")
    raw_phase, _, raw_env = rest.partition(b"\0")
    phase = raw_phase.decode(errors="replace")
    if phase not in HOOK_PHASES and phase not in (SELFTEST_PHASE, STATUS_PHASE):
        raise BadRequest(f"unknown phase {phase!r}")
    env = {}
    for entry in raw_env.split(b"\0") if raw_env else []:
        name, eq, value = entry.partition(b"=")
        if not eq or not name:
            raise BadRequest(f"malformed environment entry {entry[:40]!r}")
        env[os.fsdecode(name)] = os.fsdecode(value)
    return phase, env


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _send(conn: socket.socket, text: str) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(text.encode())


def _refuse(conn: socket.socket, text: str) -> None:
    """Answer without serving. The request is read and dropped first: closing a socket
    with unread data resets the connection, and the client would never see why."""
    _send(conn, text)
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(1.0)
        received = 0
        while received <= MAX_REQUEST and (chunk := conn.recv(65536)):
            received += len(chunk)


# What `nodecheck agent --status` is told (entry/agent_status.py): the agent's view, set
# before each fork, so that the worker serving a status request has it as it was then.
_view: dict[str, object] = {}


def run_worker(conn: socket.socket) -> int:
    """In the forked worker: one hook run for the client on `conn`."""
    from nodecheck.entry.hook import run_hook

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the runner waits for its probe children
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the agent's stop handlers are not ours
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _send(conn, "ready\n")  # only now does the client hand over its stdout/stderr
    try:
        phase, env, fds = read_request(conn)
    except BadRequest as exc:
        get_logger().warning("agent_bad_request", error=str(exc))
        _send(conn, f"bad request: {exc}\n")
        return 1
    # Still on the agent's own stderr (the journal): which run each worker served.
    get_logger().info(
        "agent_run",
        phase=phase,
        job=env.get("SLURM_JOB_ID"),
        worker=os.getpid(),
        probe_pool=sorted(pool.lent()),  # empty: another run has it, the probes are forked
    )
    _send(conn, "started\n")
    sys.stdout.flush()
    sys.stderr.flush()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    client_pid, _uid = peer_credentials(conn)
    _die_with_the_client(conn)
    if phase == STATUS_PHASE:  # `nodecheck agent --status`: the agent's view at the fork
        print(json.dumps({"event": "agent_status", **_view}), flush=True)
        code = 0
    elif phase == SELFTEST_PHASE:  # the canaries, through this worker and the probe pool
        from nodecheck.selftest.agent_side import serve_request

        code = serve_request()
    else:
        code = run_hook(HookArgs(phase), hook_pid=client_pid)
    pool.give_back()  # before the client hears: the next job start may have the probes
    sys.stdout.flush()
    sys.stderr.flush()
    _send(conn, f"exit {code}\n")
    return 0


def _die_with_the_client(conn: socket.socket) -> None:
    """The worker holds the client's stdout/stderr, which slurmd waits on: when the client
    goes (slurmd killed it at PrologEpilogTimeout, or anyone did with SIGKILL), the worker
    goes at once, and its probe children with it (they die with their parent). Reading the
    connection cannot tell: the client shuts its sending side once the request is sent. The
    socket hangs up (POLLHUP, reported whatever is asked for) only when the client has
    closed it entirely, which its death does."""

    def watch() -> None:
        poller = select.poll()
        poller.register(conn.fileno(), 0)
        gone = select.POLLHUP | select.POLLERR | select.POLLNVAL
        while not any(mask & gone for _, mask in poller.poll()):
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="client-watch", daemon=True).start()


def _listen(path: str) -> socket.socket:
    """Bind the socket root-only: its directory 0700 (created if missing), the socket 0600."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SystemExit(f"nodecheck agent: {directory} must be a directory of ours, 0700/0755")
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                raise SystemExit(f"nodecheck agent: another agent is serving {path}")
            except OSError:
                os.unlink(path)  # left by an agent that died
            finally:
                probe.close()
    old_umask = os.umask(0o177)
    try:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
    finally:
        os.umask(old_umask)
    server.listen(64)
    return server


def _reap(workers: set[int], probes: pool.ProbePool, timer: Timer | None = None) -> None:
    """Collect the children that have ended: workers, the selftest, and probe-pool members,
    which are replaced (a run killed one that hung)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            workers.clear()
            return
        if pid == 0:
            return
        workers.discard(pid)
        if timer is None or not timer.settle(pid):
            probes.settle(pid)


def _wait_for(workers: set[int], probes: pool.ProbePool, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while workers and time.monotonic() < deadline:
        _reap(workers, probes)
        time.sleep(0.05)


def fast_groups() -> set[str]:
    """The probe groups a hook run can ask for (the deep tier runs as Slurm jobs)."""
    from nodecheck.checks.registry import all_checks

    return {chk.probe_group for chk in all_checks().values() if chk.tier == "fast"}


def _keep_only(probes: pool.ProbePool, lent: list[pool.Member], lease: int | None) -> None:
    """In a new worker: the members lent to its run and their lease; nothing else of the
    pool's."""
    for member in probes.members.values():
        if member not in lent:
            os.close(member.control)
    probes.forget_lease()
    pool.use(lent, lease)


def _remove_socket(path: str, inode: int) -> None:
    """Unlink the socket if it is still the one we bound (not a successor's)."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)


def serve(path: str, selftest_every: float = 0.0, selftest_delay: float = 0.0) -> int:
    log = get_logger()
    up_since = time.monotonic()
    missing = warm_up()
    loaded = code_files(PACKAGE, dependency_files())
    stamp = code_stamp(loaded)
    server = _listen(path)
    inode = os.lstat(path).st_ino
    workers: set[int] = set()
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # A long-lived process: collect garbage, but never scan the warm heap (gc.freeze), so
    # forked workers do not copy it page by page.
    gc.collect()
    gc.freeze()
    probes = pool.ProbePool(fast_groups(), runner.serve_request)
    timer = Timer(path, selftest_every, selftest_delay)

    def selftest_child() -> None:  # holds nothing of the agent's: no socket, no pool
        server.close()
        _keep_only(probes, [], None)

    log.info(
        "agent_ready",
        socket=path,
        pid=os.getpid(),
        not_loaded=missing,
        probe_pool=sorted(probes.members),
    )
    served = 0
    try:
        while not stopping:
            if (selftest := timer.poll(selftest_child)) is not None:
                log.info("agent_selftest", pid=selftest, every_s=selftest_every)
            server.settimeout(1.0)
            try:
                conn, _ = server.accept()
            except TimeoutError:
                _reap(workers, probes, timer)
                continue
            except OSError:
                if stopping:
                    break
                raise
            with conn:
                _pid, uid = peer_credentials(conn)
                if uid != os.geteuid():
                    log.warning("agent_peer_rejected", uid=uid)
                    _refuse(conn, "refused: not our user\n")
                    continue
                if code_stamp(loaded) != stamp:
                    log.warning("agent_stale", why="code changed on disk since start; exiting")
                    _refuse(conn, "stale: code changed since the agent started\n")
                    return 0
                sys.stderr.flush()
                kernlog.catch_up()  # the run sees the kernel log up to this moment
                lent, lease = probes.lend()
                _view.update(
                    pid=os.getpid(),
                    socket=path,
                    uptime_s=round(time.monotonic() - up_since, 1),
                    served=served,
                    workers=len(workers),
                    probe_pool={m.group: m.pid for m in probes.members.values()},
                    pool_lent=not lent and bool(probes.members),
                    stuck=[{"pid": p, "group": g} for p, g in sorted(probes.stuck.items())],
                    not_loaded=missing,
                )
                pid = os.fork()
                if pid == 0:
                    code = 70
                    try:
                        server.close()
                        _keep_only(probes, lent, lease)
                        code = run_worker(conn)
                    finally:
                        os._exit(code)
                if lease is not None:
                    os.close(lease)
                workers.add(pid)
                served += 1
            _reap(workers, probes, timer)
    finally:
        # Socket first: from now on the entrypoints run in-process. Then let the runs in
        # progress finish (each is bounded by its own budget).
        _remove_socket(path, inode)
        server.close()
        timer.stop()  # its results are worth nothing against a prompt stop
        _wait_for(workers, probes, STOP_WAIT_S)
        probes.close()
        log.info("agent_stopped", served=served, unfinished=len(workers))
    return 0


def main(path: str | None, selftest_every: float = 86400.0, selftest_delay: float = 60.0) -> int:
    """`selftest_every`: the agent's own selftest (nodecheck.selftest.agent_side), the first
    `selftest_delay` after the start; 0: never."""
    where = path or os.environ.get("NODECHECK_AGENT_SOCKET") or DEFAULT_SOCKET
    return serve(where, selftest_every, selftest_delay)
