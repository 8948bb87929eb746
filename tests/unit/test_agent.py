"""The agent (nodecheck/entry/agent.py) and its client (nodecheck/entry/agent_client.py),
through the real entrypoints: same verdicts, logs and exit codes as the in-process run, and a
fallback to it whenever the agent cannot serve."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nodecheck.entry.agent_client import AgentUnavailable, parse_reply
from tests.fixtures.agent import start_agent
from tests.fixtures.imports import imported, opened, recording_imports

REPO = Path(__file__).resolve().parents[2]
PROLOG = REPO / "prolog" / "nodecheck-prolog"
EPILOG = REPO / "epilog" / "nodecheck-epilog"


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def named(text: str, event: str) -> list[dict]:
    return [e for e in lines(text) if e["event"] == event]


def write_config(tmp_path: Path, body: str = "", scontrol: str = "/bin/false") -> Path:
    path = tmp_path / "nodecheck.toml"
    path.write_text(
        f'log_file = "{tmp_path}/nodecheck.log"\nstate_dir = "{tmp_path}/state"\n'
        f'killswitch_file = "{tmp_path}/disabled"\nscontrol = "{scontrol}"\n'
        f'slurm_backend = "scontrol"\ndrain_attempts = 1\n{body}'
    )
    path.chmod(0o644)
    return path


class Agent:
    def __init__(self, sock: Path, log: Path, argv: list[str], cwd: Path = REPO) -> None:
        self.sock, self.log = sock, log
        self.proc = start_agent(argv, sock, log, cwd)

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


@pytest.fixture
def agent(tmp_path):
    run_dir = tmp_path / "run"
    started = Agent(
        run_dir / "agent.sock",
        tmp_path / "agent.log",
        [sys.executable, "-I", "-m", "nodecheck", "agent"],
    )
    yield started
    assert started.stop() == 0
    assert not started.sock.exists()  # removed on the way out
    assert "agent_stopped" in started.text()


def hook(entrypoint: Path, cfg: Path, sock: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {
        "SLURMD_NODENAME": "n1",
        "SLURM_JOB_ID": "31",
        "NODECHECK_CONFIG": str(cfg),
        "NODECHECK_PYTHON": sys.executable,
        "NODECHECK_AGENT_SOCKET": str(sock),
        **env,
    }
    return subprocess.run(
        [str(entrypoint)], env=environ, capture_output=True, text=True, timeout=60, cwd="/"
    )


def test_socket_is_root_only(agent):
    assert oct(agent.sock.stat().st_mode & 0o777) == "0o600"
    assert oct(agent.sock.parent.stat().st_mode & 0o777) == "0o700"


def test_healthy_prolog_runs_in_the_agent(agent, tmp_path):
    cfg = write_config(tmp_path, '[checks."host.mounts"]\nrequired = ["/"]\n')
    out = hook(PROLOG, cfg, agent.sock, SLURM_JOB_USER="al'ice\"; rm -rf /")
    assert out.returncode == 0, out.stderr
    assert not named(out.stderr, "agent_unavailable")
    [verdict] = named(out.stderr, "verdict")  # the worker logged to *our* stderr
    assert (verdict["status"], verdict["job"], verdict["phase"]) == ("PASS", 31, "prolog")
    assert named((tmp_path / "nodecheck.log").read_text(), "verdict") == [verdict]
    [run] = named(agent.text(), "agent_run")
    assert (run["phase"], run["job"]) == ("prolog", 31)


def test_runs_one_after_another_all_use_the_probe_pool(agent, tmp_path):
    """The agent's probe processes serve run after run (nodecheck/run/pool.py): each worker
    gives them back before its client hears the verdict, so the next job start has them."""
    [ready] = named(agent.text(), "agent_ready")
    assert {"gpu", "host", "fabric", "gpu.xid"} <= set(ready["probe_pool"])
    cfg = write_config(tmp_path, '[checks."host.mounts"]\nrequired = ["/"]\n')
    for job in ("41", "42", "43"):
        out = hook(PROLOG, cfg, agent.sock, SLURM_JOB_ID=job)
        assert out.returncode == 0, out.stderr
        assert named(out.stderr, "verdict")[0]["status"] == "PASS"
    runs = named(agent.text(), "agent_run")
    assert [r["job"] for r in runs] == [41, 42, 43]
    assert all(r["probe_pool"] == ready["probe_pool"] for r in runs), runs


def test_a_probe_process_killed_between_runs_is_replaced(agent, tmp_path):
    """A member gone (killed by a run for hanging, the OOM killer, an admin): the next run
    forks that group itself or finds its replacement, and passes either way."""
    cfg = write_config(tmp_path, '[checks."host.mounts"]\nrequired = ["/"]\n')
    members = children_of(agent.proc.pid)
    assert len(members) >= 4  # the pool's members, the agent's only children while idle
    for pid in members:
        os.kill(pid, signal.SIGKILL)
    for job in ("51", "52"):
        out = hook(PROLOG, cfg, agent.sock, SLURM_JOB_ID=job)
        assert out.returncode == 0, out.stderr
        results = named(out.stderr, "check_result")
        assert results and all(r["status"] in ("PASS", "SKIP") for r in results), results

    def replaced() -> bool:
        now = children_of(agent.proc.pid)
        return len(now) == len(members) and not set(now) & set(members)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not replaced():
        time.sleep(0.1)
    assert replaced(), (members, children_of(agent.proc.pid))


def test_failing_epilog_exit_code_comes_back(agent, tmp_path):
    calls = tmp_path / "calls"
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    scontrol.chmod(0o755)
    cfg = write_config(
        tmp_path, '[checks."host.mounts"]\nrequired = ["/nope"]\n', scontrol=str(scontrol)
    )
    out = hook(EPILOG, cfg, agent.sock, SLURM_JOB_ID="32")
    assert out.returncode == 1, out.stderr
    [verdict] = named(out.stderr, "verdict")
    assert verdict["reason"].startswith("nodecheck: host.mounts /nope: not mounted")
    assert "[epilog job 32 " in verdict["reason"]
    # the worker talked to Slurm (after `scontrol --help`: does this scontrol offer --json?)
    assert calls.read_text().startswith("--help\nshow node")
    assert [r["job"] for r in named(agent.text(), "agent_run")] == [32]


def test_stopping_the_agent_lets_runs_in_progress_finish(agent, tmp_path):
    scontrol = tmp_path / "scontrol"
    scontrol.write_text("#!/bin/sh\nsleep 2\nexit 1\n")  # a slow controller
    scontrol.chmod(0o755)
    cfg = write_config(
        tmp_path, '[checks."host.mounts"]\nrequired = ["/nope"]\n', scontrol=str(scontrol)
    )
    environ = {
        "SLURMD_NODENAME": "n1",
        "SLURM_JOB_ID": "33",
        "NODECHECK_CONFIG": str(cfg),
        "NODECHECK_PYTHON": sys.executable,
        "NODECHECK_AGENT_SOCKET": str(agent.sock),
    }
    run = subprocess.Popen(
        [str(PROLOG)], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    while not named(agent.text(), "agent_run"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    agent.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 2
    while agent.sock.exists():  # new runs go in-process at once
        assert time.monotonic() < deadline
        time.sleep(0.02)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 1, err  # the run in progress finished in the agent
    assert not named(err, "agent_unavailable")
    assert agent.proc.wait(30) == 0
    [stopped] = named(agent.text(), "agent_stopped")
    assert stopped["unfinished"] == 0


def test_dead_agent_means_an_in_process_run(tmp_path):
    sock = tmp_path / "agent.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(sock))  # a socket file nobody listens on: what a killed agent leaves
    left.close()
    out = hook(PROLOG, write_config(tmp_path), sock)
    assert out.returncode == 0, out.stderr
    [why] = named(out.stderr, "agent_unavailable")
    assert why["fallback"] == "in-process" and "Connection refused" in why["error"]
    assert named(out.stderr, "verdict")[0]["status"] in ("PASS", "WARN")


def test_hung_agent_means_an_in_process_run_not_a_hung_job_start(tmp_path):
    sock = tmp_path / "agent.sock"
    frozen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    frozen.bind(str(sock))
    frozen.listen(8)  # connections queue up, nobody accepts: a stopped or stuck agent
    try:
        out = hook(PROLOG, write_config(tmp_path), sock)
    finally:
        frozen.close()
    assert out.returncode == 0, out.stderr
    [why] = named(out.stderr, "agent_unavailable")
    assert why["error"] == "no answer from the agent within 3 s"
    assert named(out.stderr, "verdict")


CLIENT_SOURCE = REPO / "nodecheck" / "entry" / "agent_client.py"
COMPILED_CLIENT = REPO / "nodecheck" / "entry" / "agent-client"


@pytest.fixture(params=["compiled", "python"])
def client(request, tmp_path):
    """Each client run on its own, the way the entrypoint starts it: a function that runs
    it against a socket and returns (exit code, why it fell back or None, stderr). The
    in-process run it falls back to is replaced by a stand-in that reports why and exits
    99 (the compiled client's --python; the Python client's run_here)."""
    if request.param == "compiled" and not COMPILED_CLIENT.exists():
        pytest.skip("the compiled client is not built here (make client)")
    stand_in = tmp_path / "python-stand-in"
    stand_in.write_text('#!/bin/sh\necho "FALLBACK $NODECHECK_AGENT_UNAVAILABLE" >&2\nexit 99\n')
    stand_in.chmod(0o755)

    # Where another user can run them from (the test's own tmp_path is root's only).
    shared = Path(tempfile.mkdtemp(prefix="nodecheck-client-"))
    shared.chmod(0o755)
    for path in (COMPILED_CLIENT, stand_in):
        if path.exists():
            shutil.copy2(path, shared / path.name)

    def run(sock: Path, phase: str = "prolog", env: dict | None = None, user: int | None = None):
        as_user = {"user": user, "group": user} if user is not None else {}
        if request.param == "compiled":
            where = shared if user is not None else COMPILED_CLIENT.parent
            argv = [
                str(where / COMPILED_CLIENT.name),
                *("--socket", str(sock), "--python", str(shared / stand_in.name), phase),
            ]
        else:
            drop = f"os.setgid({user}); os.setuid({user}); " if user is not None else ""
            as_user = {}  # the interpreter itself may be unreadable to that user: drop inside
            probe = (  # imports first, then the user
                f"import os, sys; sys.path.insert(0, {str(CLIENT_SOURCE.parent)!r}); "
                f"import agent_client as c; {drop}"
                "c.run_here = lambda phase, why, *_: (print('FALLBACK', why, file=sys.stderr), "
                "sys.exit(99)); "
                f"sys.exit(c.main(['--socket', {str(sock)!r}, {phase!r}]))"
            )
            argv = [sys.executable, "-I", "-S", "-c", probe]
        out = subprocess.run(
            argv, env=env or {}, capture_output=True, text=True, timeout=30, cwd="/", **as_user
        )
        fallback = [ln for ln in out.stderr.splitlines() if ln.startswith("FALLBACK ")]
        why = fallback[0][len("FALLBACK ") :] if fallback else None
        return out.returncode, why, out.stderr

    yield run
    shutil.rmtree(shared, ignore_errors=True)


def test_each_client_hands_the_run_to_the_agent(agent, tmp_path, client):
    cfg = write_config(tmp_path, '[checks."host.mounts"]\nrequired = ["/"]\n')
    env = {"SLURMD_NODENAME": "n1", "SLURM_JOB_ID": "61", "NODECHECK_CONFIG": str(cfg)}
    code, why, stderr = client(agent.sock, env=env)
    assert (code, why) == (0, None), stderr
    [verdict] = named(stderr, "verdict")  # the worker logged to the client's stderr
    assert (verdict["status"], verdict["job"]) == ("PASS", 61)
    failing = write_config(tmp_path, '[checks."host.mounts"]\nrequired = ["/nope"]\n')
    code, why, stderr = client(agent.sock, "health", {**env, "NODECHECK_CONFIG": str(failing)})
    assert (code, why) == (1, None), stderr  # the worker's exit code, passed on


def test_each_client_falls_back_when_nobody_listens(tmp_path, client):
    sock = tmp_path / "agent.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(sock))  # a socket file nobody listens on: what a killed agent leaves
    left.close()
    code, why, stderr = client(sock)
    assert code == 99, stderr
    assert why.startswith(f"cannot connect to {sock}: ") and "Connection refused" in why


def test_each_client_falls_back_when_the_agent_says_nothing(tmp_path, client):
    sock = tmp_path / "agent.sock"
    frozen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    frozen.bind(str(sock))
    frozen.listen(8)  # connections queue up, nobody accepts: a stopped or stuck agent
    try:
        code, why, stderr = client(sock)
    finally:
        frozen.close()
    assert (code, why) == (99, "no answer from the agent within 3 s"), stderr


def test_each_client_falls_back_when_the_worker_gives_no_exit_code(tmp_path, client):
    """A worker that dies after "started" (killed, crashed): the run happens in-process."""
    sock = tmp_path / "agent.sock"
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fake.bind(str(sock))
    fake.listen(1)

    def serve_once():
        conn, _ = fake.accept()
        with conn:
            conn.sendall(b"ready\n")
            data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            for fd in fds:
                os.close(fd)
            assert data.startswith(b"nodecheck-agent/1\0prolog\0")
            conn.sendall(b"started\n")  # and then nothing: the worker is gone

    import threading

    server = threading.Thread(target=serve_once, daemon=True)
    server.start()
    try:
        code, why, stderr = client(sock, env={"A": "b"})
    finally:
        server.join(10)
        fake.close()
    assert (code, why) == (99, "the agent's worker ended without an exit code"), stderr


def test_other_users_cannot_reach_the_agent(agent, client):
    code, why, stderr = client(agent.sock, user=65534)  # nobody
    assert code == 99, stderr  # fell back to the in-process run (the stand-in)
    assert "Permission denied" in why
    assert not named(agent.text(), "agent_run")


def test_a_malformed_request_is_refused(agent):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(agent.sock))
        assert conn.recv(6) == b"ready\n"
        conn.sendall(b"nodecheck-agent/1\0prolog\0A=b")  # no descriptors passed
        conn.shutdown(socket.SHUT_WR)
        reply = conn.recv(4096).decode()
    assert reply.startswith("bad request: expected 3 descriptors")
    with pytest.raises(AgentUnavailable, match="bad request"):
        parse_reply(reply)
    deadline = time.monotonic() + 10
    while not named(agent.text(), "agent_bad_request"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("reply", "code"),
    [("started\nexit 0\n", 0), ("started\nexit 1\n", 1), ("started\n", None), ("", None)],
)
def test_reply_parsing(reply, code):
    if code is None:
        with pytest.raises(AgentUnavailable):
            parse_reply(reply)
    else:
        assert parse_reply(reply) == code


def test_client_knows_the_same_phases_as_the_hook():
    """agent_client.py must not import nodecheck (it runs with -S), so it keeps its own
    copy of the phases; it must say what nodecheck.entry.hook says."""
    from nodecheck.core.codes import HOOK_PHASES
    from nodecheck.entry.agent_client import PHASES

    assert PHASES == HOOK_PHASES


def test_request_round_trip():
    from nodecheck.entry.agent import BadRequest, parse_request
    from nodecheck.entry.agent_client import request_bytes

    env = {b"SLURM_JOB_ID": b"7", b"ODD": b"a=b\nc'\"; $(x)", b"LATIN": b"\xe9"}
    phase, back = parse_request(request_bytes("epilog", env))
    assert phase == "epilog"
    assert back == {"SLURM_JOB_ID": "7", "ODD": "a=b\nc'\"; $(x)", "LATIN": "\udce9"}
    for bad in (b"other/1\0prolog", b"nodecheck-agent/1\0bogus", b"nodecheck-agent/1\0prolog\0X"):
        with pytest.raises(BadRequest):
            parse_request(bad)


def test_code_stamp_sees_package_and_dependency_changes(tmp_path):
    from nodecheck.entry.agent import code_files, code_stamp

    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "c.py").write_text("z = 3\n")
    dep = tmp_path / "site" / "pynvml.py"
    dep.parent.mkdir()
    dep.write_text("# 12.535\n")
    files = code_files(package, (str(dep),))
    assert files == (
        str(package / "a.py"),
        str(package / "sub" / "c.py"),
        str(package),
        str(package / "sub"),
        str(dep),
    )
    first = code_stamp(files)
    assert first == code_stamp(files)
    dep.write_text("# 12.560, upgraded\n")
    second = code_stamp(files)
    assert second != first
    (package / "sub" / "b.py").write_text("y = 2\n")  # a new module: its directory changed
    third = code_stamp(files)
    assert third != second
    (package / "sub" / "c.py").write_text("z = 4\n")  # the same size, written again
    fourth = code_stamp(files)
    assert fourth != third
    dep.unlink()  # uninstalled
    assert code_stamp(files)[-1] is None


def test_changed_code_makes_the_agent_step_aside(tmp_path):
    """After an upgrade on disk the agent refuses the next run (the client runs the new
    code in-process) and exits for its service manager to restart it."""
    copy = tmp_path / "src"
    shutil.copytree(
        REPO / "nodecheck", copy / "nodecheck", ignore=shutil.ignore_patterns("__pycache__")
    )
    start = (
        f"import sys; sys.path.insert(0, {str(copy)!r}); from nodecheck.entry.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    stale = Agent(
        tmp_path / "run" / "agent.sock",
        tmp_path / "agent.log",
        [sys.executable, "-I", "-c", start, "agent"],
    )
    try:
        cfg = write_config(tmp_path)
        assert hook(PROLOG, cfg, stale.sock).returncode == 0
        assert len(named(stale.text(), "agent_run")) == 1  # served from the copy
        module = copy / "nodecheck" / "core" / "results.py"
        module.write_text(module.read_text() + "\n# upgraded\n")
        out = hook(PROLOG, cfg, stale.sock)
        assert out.returncode == 0, out.stderr
        assert "stale" in named(out.stderr, "agent_unavailable")[0]["error"]
        assert named(out.stderr, "verdict")  # run in-process instead
        assert stale.proc.wait(10) == 0
        assert named(stale.text(), "agent_stale")
    finally:
        stale.stop()


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def test_a_killed_client_takes_its_worker_and_probes_with_it(agent, tmp_path):
    """slurmd kills the prolog at PrologEpilogTimeout: the worker that holds the prolog's
    stdout/stderr must not live on to its budget, nor its hung probe (issue 13)."""
    replay = REPO / "tests" / "fixtures" / "nvml" / "h100-hang-remap.json"
    cfg = write_config(tmp_path, f'budget_s = 60\nnvml = "replay:{replay}"\n')
    environ = {
        "SLURMD_NODENAME": "n1",
        "SLURM_JOB_ID": "34",
        "NODECHECK_CONFIG": str(cfg),
        "NODECHECK_PYTHON": sys.executable,
        "NODECHECK_AGENT_SOCKET": str(agent.sock),
    }
    client = subprocess.Popen(
        [str(PROLOG)], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 20
    while not named(agent.text(), "agent_run"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [run] = named(agent.text(), "agent_run")
    worker = run["worker"]
    while not children_of(worker):  # the probe children are up, the gpu one hangs
        assert time.monotonic() < deadline
        time.sleep(0.05)
    probes = children_of(worker)
    client.kill()
    client.wait(5)
    # Gone long before the 60 s budget would have ended the run.
    deadline = time.monotonic() + 5
    while alive(worker) or any(alive(p) for p in probes):
        assert time.monotonic() < deadline, (worker, probes)
        time.sleep(0.05)


def test_a_warm_worker_and_its_probe_children_import_nothing(tmp_path):
    """What the agent loads before it serves (warm_up) is everything a run needs: a worker
    forked from it, and the probe children the worker forks, import no module of their own
    on a prolog that runs every fast check family (8 replayed GPUs, 8 InfiniBand ports in
    a fake sysfs tree, the host checks). A module missing from the warm set would be
    imported again at every job start, in every child that needs it. Nor does gpu.xid
    read the kernel log from its start: the agent follows it (probes/kernlog.py)."""
    from tests.fixtures.sysfs import healthy_node

    node = healthy_node(tmp_path / "sys", hcas=8)
    ports = json.dumps([f"mlx5_{i}/1" for i in range(8)])
    replay = REPO / "tests" / "fixtures" / "nvml" / "h100-healthy.json"
    cfg = write_config(
        tmp_path,
        f'sysfs_root = "{node.root}"\nnvml = "replay:{replay}"\n'
        f'[checks."ib.port"]\nports = {ports}\nrate = "400 Gb/sec (4X NDR)"\n'
        '[checks."gpu.count"]\nexpected = 8\n[checks."host.services"]\nenabled = false\n',
    )
    seen = tmp_path / "imported"
    warm_run = recording_imports(
        seen,
        before="from nodecheck.entry.agent import warm_up\nwarm_up()",
        then="from nodecheck.entry.hook import HookArgs, run_hook\n"
        "sys.exit(run_hook(HookArgs('prolog')))",
        watch=("/dev/kmsg",),
    )
    env = {"SLURMD_NODENAME": "n1", "SLURM_JOB_ID": "31", "NODECHECK_CONFIG": str(cfg)}
    out = subprocess.run(
        [sys.executable, "-I", "-c", warm_run],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = named(out.stderr, "check_result")
    assert {r["check"].split(".")[0] for r in results} >= {"gpu", "ib", "host"}, results
    assert all(r["status"] in ("PASS", "SKIP") for r in results), results
    assert imported(seen) == []
    xid = [r for r in results if r["check"] == "gpu.xid"]
    assert xid and xid[0]["status"] == "PASS", xid
    if os.access("/dev/kmsg", os.R_OK):  # followed by warm_up, never opened by the run
        assert opened(seen) == []


def _prolog_stuck_in_the_agent(tmp_path: Path, sock: Path, agent_log: Path):
    """A prolog whose GPU probe hangs (a replayed NVML call that never returns), handed to
    the agent on `sock`; returns the client, its scontrol recorder's log and the worker."""
    replay = REPO / "tests" / "fixtures" / "nvml" / "h100-hang-remap.json"
    scontrol = tmp_path / "scontrol"
    calls = tmp_path / "scontrol-calls"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    scontrol.chmod(0o755)
    cfg = write_config(tmp_path, f'budget_s = 15\nnvml = "replay:{replay}"\n', str(scontrol))
    environ = {
        "SLURMD_NODENAME": "n1",
        "SLURM_JOB_ID": "35",
        "NODECHECK_CONFIG": str(cfg),
        "NODECHECK_PYTHON": sys.executable,
        "NODECHECK_AGENT_SOCKET": str(sock),
    }
    client = subprocess.Popen(
        [str(PROLOG)], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    while not named(agent_log.read_text(), "agent_run"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [run] = named(agent_log.read_text(), "agent_run")
    assert run["probe_pool"], run  # the run was lent the pool: its gpu probe is the agent's
    time.sleep(1.0)  # the gpu member is inside the hung call
    return client, calls, run["worker"]


def test_an_agent_killed_mid_prolog_lets_no_job_start_on_an_unlooked_at_node(tmp_path):
    """kill -9 of the agent mid-prolog takes its probe processes with it. The worker used
    to report that as nodecheck's ERROR and exit 0: the job started on a GPU whose probe
    hangs. Now the worker runs the orphaned checks itself within the run's budget."""
    sock, log = tmp_path / "run" / "agent.sock", tmp_path / "agent.log"
    agent = Agent(sock, log, [sys.executable, "-I", "-m", "nodecheck", "agent"])
    client, calls, worker = _prolog_stuck_in_the_agent(tmp_path, sock, log)
    agent.proc.kill()
    agent.proc.wait(5)
    _out, err = client.communicate(timeout=60)
    [verdict] = named(err, "verdict")
    assert (client.returncode, verdict["status"]) == (1, "FAIL"), err[-3000:]
    assert verdict["reason"].startswith("nodecheck: gpu.")
    assert "probe hung" in verdict["reason"]
    assert calls.exists()  # Slurm was asked (to drain: here scontrol fails)
    assert not named(err, "agent_unavailable")  # the worker lived on and finished the run
    assert not alive(worker)


def test_a_client_whose_worker_dies_too_goes_on_with_what_is_left_of_the_budget(tmp_path):
    """Agent and worker killed at once: the client runs the prolog in-process, counting the
    budget from its own start (NODECHECK_HOOK_STARTED), not from a new one."""
    sock, log = tmp_path / "run" / "agent.sock", tmp_path / "agent.log"
    agent = Agent(sock, log, [sys.executable, "-I", "-m", "nodecheck", "agent"])
    client, _, worker = _prolog_stuck_in_the_agent(tmp_path, sock, log)
    os.kill(worker, signal.SIGKILL)
    agent.proc.kill()
    agent.proc.wait(5)
    _out, err = client.communicate(timeout=60)
    [unavailable] = named(err, "agent_unavailable")
    assert unavailable["error"] == "the agent's worker ended without an exit code"
    assert (unavailable["node"], unavailable["job"]) == ("n1", 35)
    assert unavailable["spent_s"] >= 1.0  # the time the agent had: counted, not given again
    [verdict] = named(err, "verdict")
    assert (client.returncode, verdict["status"]) == (1, "FAIL"), err[-3000:]


def _status(sock: Path) -> tuple[int, dict]:
    out = subprocess.run(
        [sys.executable, "-I", "-m", "nodecheck", "agent", "--status", "--json",
         "--socket", str(sock)],
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    return out.returncode, (json.loads(out.stdout) if out.stdout.startswith("{") else {})


def test_a_probe_stuck_in_the_kernel_never_serves_another_run(agent, tmp_path):
    """A run whose probes read a procfs that hangs in the kernel (a FUSE mount that never
    answers, as a dead NFS server does): its probe members are killed and stay in state D.
    The next run, on a healthy config, must not be lent them (it was drained "probe hung"
    for another run's mount); `agent --status` names them until the kernel lets them go."""
    from tests.fixtures.fuse_hang import hung_mount

    (tmp_path / "hung").mkdir()
    (tmp_path / "fine").mkdir()
    fine = write_config(tmp_path / "fine", '[checks."host.mounts"]\nrequired = ["/"]\n')
    code, view = _status(agent.sock)
    assert (code, view["stuck"]) == (0, []) and "host" in view["probe_pool"], view
    with hung_mount(tmp_path / "mnt") as mnt:
        hung = write_config(tmp_path / "hung", f'procfs_root = "{mnt}"\nbudget_s = 8\n')
        out = hook(PROLOG, hung, agent.sock, SLURMD_NODENAME="n1")
        [verdict] = named(out.stderr, "verdict")
        assert verdict["status"] == "FAIL" and "probe hung" in verdict["reason"], out.stderr
        code, view = _status(agent.sock)
        assert code == 1 and "host" in {s["group"] for s in view["stuck"]}, (verdict, view)
        assert not {s["pid"] for s in view["stuck"]} & set(view["probe_pool"].values())
        out = hook(PROLOG, fine, agent.sock, SLURMD_NODENAME="n1")
        [verdict] = named(out.stderr, "verdict")
        assert (out.returncode, verdict["status"]) == (0, "PASS"), out.stderr[-3000:]
    deadline = time.monotonic() + 15
    while (found := _status(agent.sock))[0] != 0:  # the mount went: the stuck ones ended
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
    assert "agent_probe_retired" in agent.text()
