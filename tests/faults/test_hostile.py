"""Hostile and faulty conditions, end to end through the CLI in a clean environment.

Each test states a verdict from docs/hostile.md: nothing crashes into an anonymous drain
(an uncaught exception exits 1, which Slurm turns into "Prolog error"), nothing hangs,
nothing is lost, and every condition leaves a clear log line.

These are fault tests, not unit tests: they inject real faults (a FUSE filesystem that
never answers, a FIFO, kill -9) into the real hook, and the promise under test is a wall
time, the hook's end within budget_s + 1 s, measured from process start to process exit.
That bound is the one wall-clock assertion they make, and it is the promise itself (issue
13's done-when), with a second of slack that scheduling noise does not reach.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.fuse_hang import assert_nothing_holds_the_hook, hung_mount, leftovers
from tests.fixtures.sysfs import healthy_node

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "nvml"
PRINTABLE = set(map(chr, range(0x20, 0x7F)))


@dataclass
class Out:
    rc: int
    wall: float
    stdout: str
    stderr: str
    pipes: frozenset[str] = frozenset()  # the hook's stdout/stderr ("pipe:[inode]")

    @property
    def events(self) -> list[dict]:
        return [json.loads(ln) for ln in self.stderr.splitlines() if ln.startswith("{")]

    def named(self, event: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == event]

    @property
    def verdict(self) -> dict:
        [v] = self.named("verdict")
        return v


def run_cli(argv, env, extra_check: str = "", cwd="/", timeout=60) -> Out:
    """`python -I -m nodecheck ARGV` (or, with extra_check, the same after registering a
    test check), timed from spawn to exit."""
    if extra_check:
        code = (
            "import sys\n"
            "from nodecheck.checks.registry import check\n"
            "from nodecheck.core.results import CheckResult, Status\n"
            f"{textwrap.dedent(extra_check)}\n"
            "from nodecheck.entry.cli import main\n"
            f"sys.exit(main({list(argv)!r}))\n"
        )
        cmd = [sys.executable, "-I", "-c", code]
    else:
        cmd = [sys.executable, "-I", "-m", "nodecheck", *argv]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ends = (proc.stdout, proc.stderr)
    pipes = frozenset(os.readlink(f"/proc/self/fd/{end.fileno()}") for end in ends if end)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"nodecheck still running after {timeout}s: {stderr[-2000:]}")
    wall = time.monotonic() - started
    return Out(proc.returncode, wall, stdout, stderr, pipes)


def hook(cfg: Path, phase="prolog", env_extra=None, extra_check="", **kw) -> Out:
    env = {"SLURMD_NODENAME": "n1", "SLURM_JOB_ID": "812", "NODECHECK_CONFIG": str(cfg)}
    env.update(env_extra or {})
    return run_cli(["hook", phase], env, extra_check=extra_check, **kw)


def fake_scontrol(tmp_path: Path, mode: str = "ok") -> tuple[Path, Path]:
    """Records each call's exact arguments (NUL-separated, calls separated by \\1).
    mode ok: answers `show node` with an idle node; fail: controller unreachable;
    hang: never answers."""
    calls = tmp_path / "scontrol-calls"
    script = tmp_path / f"scontrol-{mode}"
    body = {
        "ok": 'if [ "$1" = show ]; then\n'
        '  printf "NodeName=%s Arch=x86_64\\n   State=IDLE ThreadsPerCore=1\\n" "$3"\nfi\n'
        "exit 0\n",
        "fail": 'echo "slurm_load_node error: Unable to contact slurm controller '
        '(connect failure)" >&2\nexit 1\n',
        "hang": "exec /bin/sleep 300\n",
    }[mode]
    script.write_text(
        f"#!/bin/sh\nprintf '%s\\0' \"$@\" >> {calls}; printf '\\1' >> {calls}\n" + body
    )
    script.chmod(0o755)
    return script, calls


def recorded(calls: Path) -> list[list[str]]:
    """Each recorded call as its exact argument list."""
    if not calls.exists():
        return []
    records = calls.read_bytes().split(b"\1")[:-1]
    return [[arg.decode() for arg in rec.split(b"\0")[:-1]] for rec in records]


def drain_call(calls: Path) -> list[str]:
    """The last `scontrol update ... State=DRAIN` call's arguments."""
    drains = [c for c in recorded(calls) if c[:1] == ["update"] and "State=DRAIN" in c]
    assert drains, recorded(calls)
    return drains[-1]


def write_config(
    tmp_path: Path, body: str = "", scontrol: Path | str = "/bin/false", attempts: int = 1
) -> Path:
    path = tmp_path / "nodecheck.toml"
    path.write_text(
        f'log_file = "{tmp_path}/nodecheck.log"\n'
        f'state_dir = "{tmp_path}/state"\n'
        f'metrics_file = "{tmp_path}/metrics/nodecheck.prom"\n'
        f'killswitch_file = "{tmp_path}/disabled"\n'
        f'scontrol = "{scontrol}"\n'
        'slurm_backend = "scontrol"\n'
        f"drain_attempts = {attempts}\n"
        f"{textwrap.dedent(body)}"
    )
    path.chmod(0o644)
    return path


def assert_safe_reason(reason: str) -> None:
    assert reason.startswith("nodecheck: ")
    assert len(reason) <= 250
    assert set(reason) <= PRINTABLE, repr(reason)
    # A quote of any kind reads as `'` (nodecheck.core.reason.clean): never the others.
    for bad in ('"', "`", "$", "\\", "|", "&", "\n"):
        assert bad not in reason, (bad, reason)


# ---------------------------------------------------------------- probes that misbehave


def test_hung_probe_ends_the_run_within_budget(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    os.mkfifo(proc / "meminfo")  # reading it blocks forever, like a dying device file
    scontrol, calls = fake_scontrol(tmp_path)
    cfg = write_config(
        tmp_path,
        f"""
        budget_s = 3
        procfs_root = "{proc}"
        nvml = "replay:{FIXTURES / "h100-hang-remap.json"}"
        [checks."host.mem"]
        timeout_s = 30
        [checks."host.services"]
        enabled = false
        """,
        scontrol,
    )
    out = hook(cfg)
    assert out.wall < 3 + 0.5, out.wall
    assert out.rc == 1
    hung = [e for e in out.named("check_result") if e["status"] == "FAIL"]
    assert any(e["check"] == "host.mem" and "probe hung" in e["message"] for e in hung)
    assert "hung" in out.verdict["reason"]
    assert drain_call(calls)[:2] == ["update", "NodeName=n1"]


def test_kill_9_of_the_hook_takes_its_hung_probe_with_it(tmp_path):
    """slurmd kills a prolog past PrologEpilogTimeout with SIGKILL, where no code of ours
    runs: the probe child hanging on a FIFO must not live on."""
    proc = tmp_path / "proc"
    proc.mkdir()
    os.mkfifo(proc / "meminfo")
    cfg = write_config(tmp_path, f'budget_s = 60\nprocfs_root = "{proc}"\n')
    mark = f"NODECHECK_TEST_RUN={uuid.uuid4().hex}"
    env = {"SLURMD_NODENAME": "n1", "NODECHECK_CONFIG": str(cfg), **dict([mark.split("=")])}
    hook_proc = subprocess.Popen(
        [sys.executable, "-I", "-m", "nodecheck", "hook", "prolog"],
        env=env,
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        probes: set[int] = set()
        for _ in range(200):  # the host group's child, blocked opening the FIFO
            probes = set(leftovers(mark)) - {hook_proc.pid}
            if probes:
                break
            time.sleep(0.05)
        assert probes, "no probe child appeared"
    finally:
        hook_proc.kill()
        hook_proc.wait()
    for _ in range(20):  # within a second
        if not set(leftovers(mark)) & probes:
            break
        time.sleep(0.05)
    assert not set(leftovers(mark)) & probes, leftovers(mark)


def test_hung_probe_and_hung_controller_still_end_within_budget(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    os.mkfifo(proc / "meminfo")
    scontrol, _ = fake_scontrol(tmp_path, "hang")
    cfg = write_config(
        tmp_path,
        f"""
        budget_s = 4
        procfs_root = "{proc}"
        [checks."host.services"]
        enabled = false
        """,
        scontrol,
        attempts=3,
    )
    out = hook(cfg)
    assert out.wall < 4 + 0.5, out.wall
    assert out.rc == 1  # FAIL: Slurm drains the node itself ("Prolog error") if we could not
    assert out.verdict["action"] == "drain failed"
    assert out.named("slurm_action_failed")


CRASH = """
import os, signal
@check("t.crash", summary="dies", timeout_s=5)
def crash(ctx):
    os.kill(os.getpid(), signal.SIGSEGV)
    yield
"""


@pytest.mark.parametrize(("policy", "rc"), [("pass", 0), ("drain", 1)])
def test_crashing_probe_is_an_internal_error_never_an_anonymous_drain(tmp_path, policy, rc):
    scontrol, calls = fake_scontrol(tmp_path)
    cfg = write_config(tmp_path, f'on_internal_error = "{policy}"\n', scontrol)
    out = hook(cfg, extra_check=CRASH)
    assert out.rc == rc
    [res] = [e for e in out.named("check_result") if e["check"] == "t.crash"]
    assert res["status"] == "ERROR"
    assert "probe process ended without a result (killed by signal 11)" in res["message"]
    if policy == "pass":
        assert not calls.exists()
        assert out.verdict["status"] == "ERROR" and out.verdict["reason"] is None
    else:
        reason = out.verdict["reason"]
        assert reason.startswith("nodecheck: t.crash node: internal error: probe process ended")
        assert drain_call(calls)[-1] == f'Reason="{reason}"'


HOG = """
@check("t.hog", summary="eats memory", timeout_s=10)
def hog(ctx):
    chunks = []
    while True:
        chunks.append(bytearray(64 * 1024 * 1024))
    yield
"""


def test_memory_hog_probe_hits_its_limit(tmp_path):
    cfg = write_config(tmp_path, "probe_memory_mb = 256\n")
    out = hook(cfg, extra_check=HOG)
    assert out.rc == 0
    [res] = [e for e in out.named("check_result") if e["check"] == "t.hog"]
    assert res["status"] == "ERROR"
    assert "MemoryError" in res["message"] or "probe process ended" in res["message"]
    assert out.verdict["status"] == "ERROR"


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ("budget_s = 'soon'\n", "budget_s"),
        ("budget_s = true\n", "budget_s"),
        ("resume_after_passes = 1.5\n", "resume_after_passes"),
        ("no_such_setting = 1\n", "no_such_setting"),
        ('[checks."host.nosuch"]\nenabled = true\n', "host.nosuch"),
        ('[checks."host.mounts"]\nrequired = "/scratch"\n', "host.mounts.required"),
        ('[checks."host.mounts"]\nreqired = ["/scratch"]\n', "reqired"),
        ("[[node_class]]\nname = 'x'\nmatch = 5\n", "match"),
        ("budget_s = 20\nbudget_s = 21\n", "TOML"),
        ('[checks."host.mem"]\nphases = [{}]\n', "phases"),
    ],
)
def test_bad_config_is_a_logged_internal_error(tmp_path, body, names):
    scontrol, calls = fake_scontrol(tmp_path)
    cfg = write_config(tmp_path, body, scontrol)
    out = hook(cfg)
    assert out.rc == 0
    [err] = out.named("internal_error")
    assert names in err["error"] and str(cfg) in err["error"]
    assert not calls.exists()
    manual = run_cli(["run"], {"SLURMD_NODENAME": "n1", "NODECHECK_CONFIG": str(cfg)})
    assert manual.rc == 2 and names in (manual.stdout + manual.stderr)


def test_a_config_error_in_a_check_table_follows_on_internal_error_drain(tmp_path):
    scontrol, calls = fake_scontrol(tmp_path)
    body = 'on_internal_error = "drain"\n[checks."host.mem"]\nphases = [{}]\n'
    out = hook(write_config(tmp_path, body, scontrol))
    assert out.rc == 1
    assert "Traceback" not in out.stderr
    [err] = out.named("internal_error")
    assert "phases" in err["error"]
    assert "nodecheck.internal" in drain_call(calls)[3]


def _unreadable(tmp_path: Path, how: str) -> Path:
    path = tmp_path / "conf" / "nodecheck.toml"
    path.parent.mkdir()
    if how == "missing":
        pass
    elif how == "directory":
        path.mkdir()
    elif how == "eio":  # root ignores file modes: a read that fails for real
        path.symlink_to("/proc/self/mem")
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "binary":
        path.write_bytes(b"budget_s = 5\n\xff\xfe\x00garbage\n")
        path.chmod(0o644)
    elif how == "world-writable":
        path.write_text("budget_s = 5\n")
        path.chmod(0o666)
    elif how == "dangling-symlink":
        path.symlink_to(tmp_path / "nowhere.toml")
    return path


@pytest.mark.parametrize(
    "how", ["missing", "directory", "eio", "fifo", "binary", "world-writable", "dangling-symlink"]
)
def test_missing_or_unreadable_config_is_a_logged_internal_error(tmp_path, how):
    cfg = _unreadable(tmp_path, how)
    out = hook(cfg, timeout=20)
    assert out.rc == 0, out.stderr[-2000:]
    assert out.wall < 10
    [err] = out.named("internal_error")
    assert str(cfg) in err["error"] or "config" in err["error"]
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------- devices


def test_nvml_library_absent(tmp_path):
    """pynvml cannot load libnvidia-ml: gpu.count FAILs when the class expects GPUs and
    SKIPs when it expects none; the other gpu checks SKIP."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        pass
    else:
        pytest.skip("NVML is present on this machine")
    scontrol, _ = fake_scontrol(tmp_path)
    expects = write_config(
        tmp_path, 'nvml = "real"\n[checks."gpu.count"]\nexpected = 8\n', scontrol
    )
    out = hook(expects)
    gpu = {e["check"]: e for e in out.named("check_result") if e["check"].startswith("gpu.")}
    assert gpu["gpu.count"]["status"] == "FAIL"
    assert "NVML unavailable" in gpu["gpu.count"]["message"]
    assert out.rc == 1 and "gpu.count" in out.verdict["reason"]
    none = write_config(tmp_path, 'nvml = "real"\n[checks."gpu.count"]\nexpected = 0\n', scontrol)
    out = hook(none)
    assert out.rc == 0, out.verdict
    gpu = {e["check"]: e for e in out.named("check_result") if e["check"].startswith("gpu.")}
    assert gpu["gpu.count"]["status"] == "SKIP"


def test_unreadable_sysfs_file_is_reported_by_port(tmp_path):
    fake = healthy_node(tmp_path / "sys", hcas=4)
    fake.break_file(fake.port_path("mlx5_2", 1) / "state", "eio")
    scontrol, _ = fake_scontrol(tmp_path)
    ports = ", ".join(f'"mlx5_{i}/1"' for i in range(4))
    cfg = write_config(
        tmp_path, f'sysfs_root = "{fake.root}"\n[checks."ib.port"]\nports = [{ports}]\n', scontrol
    )
    out = hook(cfg)
    bad = [
        e
        for e in out.named("check_result")
        if e["check"] == "ib.port" and e.get("component") == "mlx5_2/1"
    ]
    assert bad and bad[0]["status"] in ("FAIL", "ERROR")
    assert "Traceback" not in out.stderr
    if bad[0]["status"] == "FAIL":
        assert out.rc == 1 and "mlx5_2/1" in out.verdict["reason"]
    else:
        assert out.rc == 0


# ---------------------------------------------------------------- disk full


@contextlib.contextmanager
def tmpfs(mnt: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `mnt` for the test, lazily unmounted after; the test is skipped
    where mount is not permitted."""
    mnt.mkdir()
    got = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {got.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def full_fs(tmp_path):
    """A 256 KiB tmpfs, filled up."""
    with tmpfs(tmp_path / "full", "size=256k,mode=755") as mnt:
        for sub in ("state", "metrics", "log"):
            (mnt / sub).mkdir(mode=0o700)
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mnt


@pytest.mark.parametrize("failing", [False, True])
def test_disk_full_for_state_metrics_and_log(tmp_path, full_fs, failing):
    scontrol, calls = fake_scontrol(tmp_path)
    body = f"""
    log_file = "{full_fs}/log/nodecheck.log"
    state_dir = "{full_fs}/state"
    metrics_file = "{full_fs}/metrics/nodecheck.prom"
    """
    if failing:
        body += '[checks."host.mounts"]\nrequired = ["/nodecheck-missing"]\n'
    cfg = tmp_path / "nodecheck.toml"
    cfg.write_text(
        f'scontrol = "{scontrol}"\nslurm_backend = "scontrol"\ndrain_attempts = 1\n'
        f'killswitch_file = "{tmp_path}/disabled"\n{textwrap.dedent(body)}'
    )
    cfg.chmod(0o644)
    out = hook(cfg)
    assert "Traceback" not in out.stderr
    verdict = out.verdict  # the verdict still reaches stderr (slurmd's log)
    if failing:
        assert out.rc == 1
        assert verdict["action"] == "drained"
        assert drain_call(calls)[:2] == ["update", "NodeName=n1"]
    else:
        # Checks that keep state (the XID cursor, IB counter baselines) cannot save it:
        # their own ERROR, on_internal_error decides (pass: the job runs).
        assert out.rc == 0 and verdict["status"] in ("PASS", "ERROR")
        errors = [e for e in out.named("check_result") if e["status"] == "ERROR"]
        assert all("full" in e["message"] for e in errors), errors
        assert not calls.exists()
    assert out.named("log_file_write_failed") or out.named("log_file_unusable")
    assert out.named("history_not_saved")


def test_log_file_on_dev_full(tmp_path):
    cfg = write_config(tmp_path, 'log_file = "/dev/full"\n')
    cfg.write_text(cfg.read_text().replace(f'log_file = "{tmp_path}/nodecheck.log"\n', ""))
    out = hook(cfg)
    assert out.rc == 0
    assert out.verdict["status"] in ("PASS", "WARN")
    [note] = out.named("log_file_write_failed")
    assert note["file"] == "/dev/full" and "No space left" in note["error"]


# ---------------------------------------------------------------- a filesystem that never answers


def _hung_fs_config(
    tmp_path: Path, scontrol: Path, state_dir: Path, extra: str = "", log_dir: Path | None = None
) -> Path:
    cfg = tmp_path / "nodecheck.toml"
    log_file = (log_dir or tmp_path) / "nodecheck.log"
    cfg.write_text(
        f'scontrol = "{scontrol}"\nslurm_backend = "scontrol"\ndrain_attempts = 1\n'
        f'killswitch_file = "{tmp_path}/disabled"\nlog_file = "{log_file}"\n'
        f'metrics_file = ""\nstate_dir = "{state_dir}"\nbudget_s = 4\n'
        f'[checks."host.services"]\nenabled = false\n{textwrap.dedent(extra)}'
    )
    cfg.chmod(0o644)
    return cfg


def test_state_dir_and_log_on_a_hung_filesystem_blame_it_and_end_within_budget(tmp_path):
    """Every access to the state directory and the log file would sleep in the kernel,
    unkillable. The run logs to stderr only, ends within budget_s + 1 s, drains with a
    reason naming the state directory (not the checks that keep state there), and leaves
    nothing that holds the hook's descriptors."""
    scontrol, calls = fake_scontrol(tmp_path)
    mark = f"NODECHECK_TEST_RUN={uuid.uuid4().hex}"
    with hung_mount(tmp_path / "hung") as mount:
        cfg = _hung_fs_config(tmp_path, scontrol, mount / "state", log_dir=mount / "log")
        out = hook(cfg, env_extra=dict([mark.split("=")]), timeout=30)
        left = assert_nothing_holds_the_hook(mark)
    assert out.wall <= 4 + 1, out.wall
    assert out.rc == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    reason = out.verdict["reason"]
    assert reason.startswith(f"nodecheck: nodecheck.state {str(mount)[:20]}"), reason
    assert "no answer within" in reason
    assert "nodecheck: nodecheck.state " in drain_call(calls)[-1]
    failed = {e["check"] for e in out.named("check_result") if e["status"] == "FAIL"}
    assert failed == {"nodecheck.state"}, failed
    assert out.named("history_not_saved")
    [unusable] = out.named("log_file_unusable")
    assert "no answer within" in unusable["problem"]
    print(f"hung state_dir: wall {out.wall:.2f}s, left behind: {left}")


def test_config_file_on_a_hung_filesystem_gives_the_documented_verdict_within_budget(tmp_path):
    """The config file itself sits on a filesystem that never answers: the hook never reads
    it (its first look does, from a child), so the run ends at once with the verdict of a
    config that cannot be used (on_internal_error's default, pass: no drain, exit 0), says
    which file on stderr, and leaves nothing holding the hook's descriptors."""
    _scontrol, calls = fake_scontrol(tmp_path)
    mark = f"NODECHECK_TEST_RUN={uuid.uuid4().hex}"
    with hung_mount(tmp_path / "hung") as mount:
        out = hook(mount / "nodecheck.toml", env_extra=dict([mark.split("=")]), timeout=30)
        left = assert_nothing_holds_the_hook(mark)
    assert out.rc == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    [error] = out.named("internal_error")
    assert error["error"].startswith(f"config: {mount}/nodecheck.toml: no answer within"), error
    assert error["on_internal_error"] == "pass"
    [unusable] = out.named("log_file_unusable")
    assert "which log file is unknown" in unusable["problem"], unusable
    assert recorded(calls) == []  # no anonymous drain, and no controller call at all
    # The run's budget (the default, 20 s: no config) is not what ends it: the look is.
    assert out.wall <= 20, out.wall
    print(f"hung config file: wall {out.wall:.2f}s, left behind: {left}")


def test_log_file_that_hangs_mid_run_ends_within_budget_with_nodecheck_reason(tmp_path):
    """The log file's filesystem answers the first look (a stat) and hangs when the run
    creates the log directory, as an NFS server that dies mid-run does. The run sleeps in
    the kernel, unkillable; its keeper (the hook process) relays its output, ends the hook
    at budget_s + its slack, drains with a reason naming the stuck step (nodecheck.run),
    and what is left behind holds none of the hook's descriptors."""
    scontrol, calls = fake_scontrol(tmp_path)
    mark = f"NODECHECK_TEST_RUN={uuid.uuid4().hex}"
    with hung_mount(tmp_path / "hung", answer_lookups=True) as mount:
        cfg = _hung_fs_config(tmp_path, scontrol, tmp_path / "state", log_dir=mount / "log")
        out = hook(cfg, env_extra=dict([mark.split("=")]), timeout=30)
        left = leftovers(mark)
        stuck = {pid: fds for pid, (state, fds) in left.items() if state == "D"}
        assert stuck, left  # the run itself, in mkdir on the mount: a real hang
        for pid, (_state, fds) in left.items():
            assert not set(fds.values()) & out.pipes, (pid, fds, out.pipes)
    assert out.wall <= 4 + 1, out.wall
    assert out.rc == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    [unfinished] = out.named("run_unfinished")
    reason = unfinished["reason"]
    assert reason.startswith("nodecheck: nodecheck.run node: run stuck past its budget"), reason
    assert f"opening the log file {mount}/log/nodecheck.log" in unfinished["error"]
    assert unfinished["action"] == "drained"
    assert drain_call(calls)[-1] == f'Reason="{reason}"'
    print(f"log file hung mid-run: wall {out.wall:.2f}s, left behind: {left}")


def test_state_dir_that_hangs_mid_run_drains_with_nodecheck_reason_within_budget(tmp_path):
    """The state directory answers the first look (a stat) and hangs when it is first
    opened: gpu.xid, which keeps its cursor there, hangs in its probe child (a FAIL naming
    the state it was opening), and the run then sticks reading the node's history for its
    verdict. The keeper ends the hook within budget_s + 1 s and drains with a reason naming
    that step, never an anonymous "Prolog error"."""
    scontrol, calls = fake_scontrol(tmp_path)
    mark = f"NODECHECK_TEST_RUN={uuid.uuid4().hex}"
    (tmp_path / "kern.log").write_text("")
    with hung_mount(tmp_path / "hung", answer_lookups=True) as mount:
        extra = f"""
        [checks."gpu.xid"]
        kmsg = "{tmp_path / "kern.log"}"
        """
        cfg = _hung_fs_config(tmp_path, scontrol, mount / "state", extra)
        out = hook(cfg, env_extra=dict([mark.split("=")]), timeout=30)
        left = leftovers(mark)
        for pid, (_state, fds) in left.items():
            assert not set(fds.values()) & out.pipes, (pid, fds, out.pipes)
    assert out.wall <= 4 + 1, out.wall
    assert out.rc == 1, out.stderr[-2000:]
    [xid] = [e for e in out.named("check_result") if e["check"] == "gpu.xid"]
    assert xid["status"] == "FAIL", xid
    assert xid["message"].endswith(f"in open the state in {mount}/state"), xid
    [unfinished] = out.named("run_unfinished")
    assert f"while reading the history in {mount}/state" in unfinished["error"], unfinished
    reason = unfinished["reason"]
    assert reason.startswith("nodecheck: nodecheck.run node: run stuck past its budget"), reason
    assert drain_call(calls)[-1] == f'Reason="{reason}"'
    print(f"state_dir hung mid-run: wall {out.wall:.2f}s, left behind: {left}")


STUCK_DRAIN = """
import os, time
from nodecheck.slurm import scontrol as _scontrol
_keeper = os.getpid()  # the hook process; the run is a child of it
_drain = _scontrol.ScontrolBackend.drain
def _started_and_never_ends(self, node, reason):
    if os.getpid() == _keeper:
        return _drain(self, node, reason)
    time.sleep(3600)  # as a started libslurm RPC does until MessageTimeout, deaf to our deadline
_scontrol.ScontrolBackend.drain = _started_and_never_ends
"""


def test_a_drain_call_that_never_ends_is_made_again_by_the_keeper_within_budget(tmp_path):
    """The run's drain call starts and never returns (pyslurm's RPCs end only at Slurm's
    MessageTimeout, whatever our deadline): the keeper ends the run past its budget and
    makes the planned drain itself, with the run's own reason, through scontrol."""
    scontrol, calls = fake_scontrol(tmp_path)
    body = 'budget_s = 4\n[checks."host.mounts"]\nrequired = ["/nope"]\n'
    cfg = write_config(tmp_path, body, scontrol)
    out = hook(cfg, extra_check=STUCK_DRAIN, timeout=30)
    assert out.wall <= 4 + 1, out.wall
    assert out.rc == 1, out.stderr[-2000:]
    [unfinished] = out.named("run_unfinished")
    assert "while acting on the plan (drain)" in unfinished["error"], unfinished
    assert unfinished["verdict"] == "planned" and unfinished["action"] == "drained"
    reason = unfinished["reason"]
    assert reason.startswith("nodecheck: host.mounts /nope:"), reason
    assert drain_call(calls)[-1] == f'Reason="{reason}"'


KILLED_RUN = """
import os, signal
from nodecheck.run import pipeline as _pipeline
_keeper = os.getpid()  # the hook process; the run is a child of it
_execute = _pipeline.execute
def _killed_like_the_oom_killer_does(request):
    if os.getpid() != _keeper:
        os.kill(os.getpid(), signal.SIGKILL)
    return _execute(request)
_pipeline.execute = _killed_like_the_oom_killer_does
"""


@pytest.mark.parametrize(("policy", "rc"), [("pass", 0), ("drain", 1)])
def test_a_run_killed_by_a_signal_is_judged_by_on_internal_error(tmp_path, policy, rc):
    """The run dies of SIGKILL before its verdict (the OOM killer picks the largest process:
    the run, not its small keeper). That is nodecheck's failure, not the node's: the keeper
    says so and ends the hook as on_internal_error asks, with a reason of its own when that
    is drain, never an anonymous exit code."""
    scontrol, calls = fake_scontrol(tmp_path)
    cfg = write_config(tmp_path, f'on_internal_error = "{policy}"\n', scontrol)
    out = hook(cfg, extra_check=KILLED_RUN)
    assert out.rc == rc, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    [unfinished] = out.named("run_unfinished")
    assert unfinished["error"].startswith("the run was killed by signal 9 while"), unfinished
    assert unfinished["verdict"] == "ERROR"
    if policy == "drain":
        reason = unfinished["reason"]
        assert reason.startswith("nodecheck: nodecheck.run node: the run was killed by signal 9")
        assert drain_call(calls)[-1] == f'Reason="{reason}"'
    else:
        assert unfinished["action"] == "none" and recorded(calls) == []


def _processes_naming(text: str) -> dict[int, dict[int, str]]:
    """pid -> descriptors of every live process whose command line contains `text`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (entry / "cmdline").read_bytes():
                fds = {int(fd.name): os.readlink(fd) for fd in (entry / "fd").iterdir()}
                found[int(entry.name)] = fds
    return found


def test_scontrol_stuck_in_the_kernel_is_left_behind_not_waited_for(tmp_path):
    """scontrol itself sleeps in the kernel (its slurm.conf on an NFS mount that stopped
    answering), where SIGKILL does not reach it: a killed call that is then waited for never
    ends. Each call is abandoned at its deadline instead, so the run (and the keeper's own
    drain, if it comes to that) ends within budget_s + 1 s, its history written; what is left
    is scontrol, holding nothing of the hook's. Slurm drains on the exit code."""
    calls = tmp_path / "scontrol-calls"
    with hung_mount(tmp_path / "hung") as mount:
        scontrol = tmp_path / "scontrol-stuck"
        scontrol.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec cat {mount}/slurm.conf\n')
        scontrol.chmod(0o755)
        body = 'budget_s = 4\n[checks."host.mounts"]\nrequired = ["/nope"]\n'
        out = hook(write_config(tmp_path, body, scontrol), timeout=30)
        stuck = _processes_naming(f"{mount}/slurm.conf")
        for pid, fds in stuck.items():
            assert not set(fds.values()) & out.pipes, (pid, fds, out.pipes)
    assert stuck, "scontrol should still be there, asleep in the kernel"
    assert calls.read_text().splitlines(), "scontrol was never run"
    assert out.wall <= 4 + 1, out.wall
    assert out.rc == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert out.named("slurm_read_failed"), out.stderr[-2000:]
    assert out.verdict["action"] == "drain failed"
    # The calls took the whole budget; the run's record is still written (state.LATE_WAIT_S).
    assert not out.named("history_not_saved"), out.named("history_not_saved")
    print(f"scontrol stuck in the kernel: wall {out.wall:.2f}s, left behind: {stuck}")


def test_probe_stuck_in_the_kernel_holds_no_hook_descriptor(tmp_path):
    """host.mounts on a mount that never answers: its statvfs thread sleeps in state D and
    the probe cannot exit; the hook still ends within budget and its stdout/stderr reach
    EOF (communicate() returns), which is what slurmd waits for."""
    scontrol, calls = fake_scontrol(tmp_path)
    mark = f"NODECHECK_TEST_RUN={uuid.uuid4().hex}"
    # A short path: the reason keeps a component of up to 48 characters.
    with (
        tempfile.TemporaryDirectory(prefix="nc-", dir="/tmp") as short,
        hung_mount(Path(short) / "m") as mount,
    ):
        extra = f"""
        [checks."host.mounts"]
        required = ["{mount}"]
        probe_timeout_s = 1.0
        """
        cfg = _hung_fs_config(tmp_path, scontrol, tmp_path / "state", extra)
        out = hook(cfg, env_extra=dict([mark.split("=")]), timeout=30)
        left = assert_nothing_holds_the_hook(mark)
    assert out.wall <= 4 + 1, out.wall
    assert out.rc == 1
    assert out.verdict["reason"].startswith(f"nodecheck: host.mounts {mount}: not responding")
    assert drain_call(calls)[:2] == ["update", "NodeName=n1"]
    print(f"probe stuck on a mount: wall {out.wall:.2f}s, left behind: {left}")


# ---------------------------------------------------------------- controller


def test_unreachable_controller_retries_then_exits_nonzero(tmp_path):
    scontrol, calls = fake_scontrol(tmp_path, "fail")
    cfg = write_config(
        tmp_path,
        'budget_s = 6\n[checks."host.mounts"]\nrequired = ["/nope"]\n',
        scontrol,
        attempts=3,
    )
    out = hook(cfg)
    assert out.rc == 1
    assert out.wall < 6 + 0.5
    failed = out.named("slurm_call_failed")
    # Retries use the whole budget, not a fixed count (issue 13.3): drain_attempts = 3
    # here, and the controller is still asked again while the budget lasts.
    attempts = [e["attempt"] for e in failed]
    assert attempts == list(range(1, len(attempts) + 1)) and len(attempts) > 3, attempts
    assert "Unable to contact slurm controller" in failed[0]["error"]
    assert out.verdict["action"] == "drain failed"
    # One controller call per attempt; `scontrol --help` (the backend asking once whether this
    # scontrol offers --json) contacts no daemon.
    assert [c for c in recorded(calls) if c != ["--help"]] == recorded(calls)[1:]
    assert len(recorded(calls)) == 1 + len(attempts)


# ---------------------------------------------------------------- hostile text


HOSTILE = "x\"';$(reboot)`id`|&>/tmp/p\n\tnext line " + "A" * 400


def test_hostile_hca_name_gives_a_safe_one_line_reason(tmp_path):
    fake = healthy_node(tmp_path / "sys", hcas=2)
    name = "mlx5_" + HOSTILE.replace("/", "_")[:200]
    fake.add_hca(name, state=1, phys_state=3)
    scontrol, calls = fake_scontrol(tmp_path)
    ports = json.dumps(["mlx5_0/1", "mlx5_1/1", f"{name}/1"])  # JSON strings are TOML strings
    cfg = write_config(
        tmp_path, f'sysfs_root = "{fake.root}"\n[checks."ib.port"]\nports = {ports}\n', scontrol
    )
    out = hook(cfg)
    assert out.rc == 1, out.stderr[-3000:]
    reason = out.verdict["reason"]
    assert_safe_reason(reason)
    drain = drain_call(calls)
    assert drain[:3] == ["update", "NodeName=n1", "State=DRAIN"]
    assert drain[3] == f'Reason="{reason}"' and len(drain) == 4


def test_hostile_gpu_name_gives_a_safe_one_line_reason(tmp_path):
    snap = json.loads((FIXTURES / "h100-healthy.json").read_text())
    snap["gpus"][3]["name"] = HOSTILE
    replay = tmp_path / "hostile.json"
    replay.write_text(json.dumps(snap))
    scontrol, calls = fake_scontrol(tmp_path)
    cfg = write_config(
        tmp_path,
        f'nvml = "replay:{replay}"\n[checks."gpu.model"]\nname = "NVIDIA H100 80GB HBM3"\n',
        scontrol,
    )
    out = hook(cfg)
    assert out.rc == 1
    reason = out.verdict["reason"]
    assert_safe_reason(reason)
    assert "gpu.model" in reason
    assert drain_call(calls)[3] == f'Reason="{reason}"'


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SLURM_JOB_ID", "5; rm -rf /"),
        ("SLURM_JOB_ID", "$(reboot)"),
        ("SLURM_JOB_ID", "9" * 5000),
        ("SLURM_JOB_ID", "12\n13"),
        ("SLURM_JOB_ID", "4242\n"),
        ("SLURM_JOB_USER", "alice\n"),
        ("SLURM_JOB_USER", 'alice"; reboot'),
        ("SLURM_JOB_USER", "../../etc"),
        ("SLURM_JOB_UID", "-1"),
        ("SLURM_JOB_GPUS", "0,1,$(id)"),
        ("SLURM_NODELIST", "n[1-3];reboot"),
    ],
)
def test_hostile_job_env_is_ignored_and_logged(tmp_path, name, value):
    scontrol, calls = fake_scontrol(tmp_path)
    cfg = write_config(tmp_path, '[checks."host.mounts"]\nrequired = ["/nope"]\n', scontrol)
    out = hook(cfg, env_extra={name: value})
    [ignored] = out.named("env_ignored")
    assert name in ignored["variables"]
    assert out.rc == 1
    reason = out.verdict["reason"]
    assert_safe_reason(reason)
    assert value not in reason
    assert drain_call(calls)[3] == f'Reason="{reason}"'


@pytest.mark.parametrize(
    "value", ["n1;reboot", "n1 n2", "../n1", "$(id)", "n1\nn2", "n2\n", "", "x" * 300, "-n1"]
)
def test_hostile_node_name_is_refused_without_a_slurm_call(tmp_path, value):
    scontrol, calls = fake_scontrol(tmp_path)
    cfg = write_config(tmp_path, '[checks."host.mounts"]\nrequired = ["/nope"]\n', scontrol)
    out = hook(cfg, env_extra={"SLURMD_NODENAME": value})
    if value == "":  # unset in effect: the host name is used, a plain name
        assert out.rc == 1
        return
    assert out.rc == 0
    [refused] = out.named("refused")
    assert "refusing node name" in refused["error"]
    assert "Traceback" not in out.stderr
    assert not calls.exists()
    assert not (tmp_path / "state").exists()  # no state directory named after it either


@pytest.mark.parametrize(
    "where", ["/dev/null", "/", "relative/slurm.conf", "/nonexistent/slurm.conf", "world", "\n"]
)
def test_odd_slurm_conf_does_not_change_the_config_nodecheck_trusts(tmp_path, where):
    if where == "world":
        evil = tmp_path / "evil"
        evil.mkdir()
        (evil / "nodecheck.toml").write_text("disabled = true\n")
        (evil / "nodecheck.toml").chmod(0o666)
        where = str(evil / "slurm.conf")
    env = {"SLURMD_NODENAME": "n1", "SLURM_JOB_ID": "3", "SLURM_CONF": where}
    out = run_cli(["hook", "prolog"], env, cwd=tmp_path)
    assert out.rc == 0
    assert "Traceback" not in out.stderr
    if "evil" in where:
        [err] = out.named("internal_error")
        assert "writable by group or others" in err["error"]
    assert not out.named("disabled")


@pytest.mark.parametrize(
    "value", ["python3", "relative/python3", "/nonexistent/python", "/usr/bin/python3 -c 1", ""]
)
def test_entrypoint_ignores_a_nodecheck_python_that_is_no_absolute_executable(tmp_path, value):
    cfg = write_config(tmp_path, "")
    (tmp_path / "python3").symlink_to("/bin/false")  # what a relative value would find
    (tmp_path / "relative").mkdir()
    (tmp_path / "relative" / "python3").symlink_to("/bin/false")
    env = {"SLURMD_NODENAME": "n1", "NODECHECK_CONFIG": str(cfg), "NODECHECK_PYTHON": value}
    out = subprocess.run(
        [str(REPO / "prolog" / "nodecheck-prolog")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"event": "verdict"' in out.stderr


@pytest.mark.parametrize("how", ["symlink", "relative", "symlinked-dir"])
def test_entrypoint_finds_itself_however_it_is_called(tmp_path, how):
    """Slurm may point at a symlink to the entrypoint, or at a path through a symlinked
    directory; a shell may call it by a relative path. Each finds nodecheck/entry/entrypoint.sh
    and the checkout's python."""
    cfg = write_config(tmp_path, "")
    env = {"SLURMD_NODENAME": "n1", "NODECHECK_CONFIG": str(cfg)}
    target = REPO / "prolog" / "nodecheck-prolog"
    cwd = tmp_path
    if how == "symlink":
        (tmp_path / "prolog.d").mkdir()
        (tmp_path / "prolog.d" / "50-nodecheck").symlink_to(target)
        argv = [str(tmp_path / "prolog.d" / "50-nodecheck")]
    elif how == "symlinked-dir":
        (tmp_path / "opt").symlink_to(REPO)
        argv = [str(tmp_path / "opt" / "prolog" / "nodecheck-prolog")]
    else:
        cwd = REPO
        argv = ["prolog/nodecheck-prolog"]
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"event": "verdict"' in out.stderr


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs."""
    with tmpfs(tmp_path / "ro", "ro,size=64k") as mnt:
        yield mnt


@pytest.mark.parametrize("phase", ["prolog", "health"])
def test_state_dir_under_a_read_only_parent_is_a_clear_verdict(tmp_path, read_only_dir, phase):
    scontrol, _ = fake_scontrol(tmp_path)
    cfg = write_config(tmp_path, f'state_dir = "{read_only_dir}/state"\n', scontrol)
    cfg.write_text(cfg.read_text().replace(f'state_dir = "{tmp_path}/state"\n', ""))
    out = hook(cfg, phase=phase)
    assert out.rc == 0
    assert "Traceback" not in out.stderr
    assert not [e for e in out.named("check_result") if "internal error" in e["message"]]
    unusable = [e for e in out.named("check_result") if e["message"].startswith("state unusable: ")]
    assert unusable, out.stderr[-3000:]
    assert all("Read-only file system" in e["message"] for e in unusable)
    assert out.verdict["status"] == "ERROR"


def test_no_environment_at_all(tmp_path):
    out = run_cli(["hook", "prolog"], {}, cwd=tmp_path)
    assert out.rc == 0
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------- file permissions


def _created(root: Path) -> list[Path]:
    return [root, *root.rglob("*")] if root.exists() else []


@pytest.mark.parametrize("failing", [False, True])
def test_state_history_metrics_and_log_files_are_private_even_with_umask_000(tmp_path, failing):
    scontrol, _ = fake_scontrol(tmp_path)
    body = '[checks."host.mounts"]\nrequired = ["/nope"]\n' if failing else ""
    cfg = write_config(tmp_path, body, scontrol)
    env = {"SLURMD_NODENAME": "n1", "SLURM_JOB_ID": "9", "NODECHECK_CONFIG": str(cfg)}
    for phase in ("prolog", "epilog", "health"):
        proc = subprocess.run(
            [sys.executable, "-I", "-m", "nodecheck", "hook", phase],
            env=env, cwd="/", capture_output=True, text=True, timeout=60, umask=0,
        )  # fmt: skip
        assert "Traceback" not in proc.stderr
    made = [
        *_created(tmp_path / "state"),
        *_created(tmp_path / "metrics"),
        tmp_path / "nodecheck.log",
    ]
    assert any(p.name.startswith("state") for p in made)
    assert (tmp_path / "metrics" / "nodecheck.prom").exists()
    for path in made:
        st = path.lstat()
        assert st.st_uid == os.geteuid(), path  # root, when run as root (as slurmd runs us)
        assert not st.st_mode & 0o002, f"{path} is world-writable ({st.st_mode & 0o777:o})"
        assert not st.st_mode & 0o020, f"{path} is group-writable ({st.st_mode & 0o777:o})"
    for path in _created(tmp_path / "state"):
        assert not path.lstat().st_mode & 0o077, f"{path} is not private"


def test_world_writable_config_is_refused_and_nothing_is_salvaged_from_it(tmp_path):
    """A config others can write must not even lend its scontrol path or policy."""
    evil = tmp_path / "evil-scontrol"
    marker = tmp_path / "evil-ran"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\n")
    evil.chmod(0o755)
    cfg = write_config(
        tmp_path, 'on_internal_error = "drain"\nbudget_s = "broken"\n', scontrol=evil
    )
    cfg.chmod(0o666)
    out = hook(cfg)
    assert out.rc == 0
    [err] = out.named("internal_error")
    assert "writable by group or others" in err["error"]
    assert err["on_internal_error"] == "pass"
    assert not marker.exists()
    for argv in (["run"], ["list"], ["resume", "--force"]):
        manual = run_cli(argv, {"SLURMD_NODENAME": "n1", "NODECHECK_CONFIG": str(cfg)})
        assert manual.rc == 2, (argv, manual.stdout, manual.stderr)
        assert "writable by group or others" in manual.stdout + manual.stderr
    assert not marker.exists()
