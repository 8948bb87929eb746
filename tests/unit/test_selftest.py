"""`nodecheck selftest` (nodecheck/selftest/): every enabled check fed its known-bad and
known-good canaries through the hooks' run path, in-process and through a real agent; a
check broken on purpose (by a blinding option, or in its code) is reported; the node's
state, log and Slurm are left alone; the metrics file carries the result."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from selftest_breakers import launcher

from nodecheck.checks.registry import all_checks
from nodecheck.selftest import kernlogs, nvml_data
from nodecheck.selftest.canaries import CANARIES, WAIVED, all_canaries
from nodecheck.store import metrics
from tests.fixtures.agent import start_agent

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "tests" / "fixtures" / "real"
PLAIN = [sys.executable, "-I", "-m", "nodecheck"]

# A node that says what it has: the canaries must build exactly this and pass it.
NODE_OPTIONS = """
[checks."ib.port"]
ports = ["mlx5_0/1", "mlx5_1/1", "mlx5_4/1"]
rate = "200 Gb/sec (4X HDR)"
[checks."ib.counters"]
ports = ["mlx5_0/1", "mlx5_1/1", "mlx5_4/1"]
[checks."net.link"]
devices = ["ib0", "eth2"]
speed = 200000
[checks."host.services"]
required = ["munged", "nvidia-fabricmanager"]
[checks."host.disk"]
min_free_gib = {"/scratch" = 100}
[checks."gpu.count"]
expected = 4
"""
# Options that blind a check to its fault, or make it fire on a healthy node.
BLINDING = """
[checks."gpu.xid"]
ignore = [119, 79, 154]
[checks."ib.counters"]
counters = ["port_xmit_data"]
hw_counters = []
[checks."gpu.thermal"]
max_temp_c = 25
warn_temp_c = 20
"""


@pytest.fixture
def recorder(tmp_path):
    """scontrol that records every call, as the config's and first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol-calls"
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    script.chmod(0o755)
    return script, calls


def write_config(tmp_path: Path, body: str = "", scontrol: str = "/bin/false") -> Path:
    path = tmp_path / "nodecheck.toml"
    path.write_text(
        f'log_file = "{tmp_path}/nodecheck.log"\nstate_dir = "{tmp_path}/state"\n'
        f'killswitch_file = "{tmp_path}/disabled"\n'
        f'metrics_file = "{tmp_path}/metrics/nodecheck.prom"\n'
        f'scontrol = "{scontrol}"\nslurm_backend = "scontrol"\ndrain_attempts = 1\n{body}'
    )
    path.chmod(0o644)
    return path


def nodecheck(
    cfg: Path, *args: str, argv: list[str] = PLAIN, sock: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    environ = {
        "PATH": f"{cfg.parent / 'bin'}:/usr/bin:/bin",
        "SLURMD_NODENAME": "n1",
        "NODECHECK_CONFIG": str(cfg),
        "NODECHECK_AGENT_SOCKET": str(sock or cfg.parent / "no-agent.sock"),
        **env,
    }
    return subprocess.run(
        [*argv, *args], env=environ, capture_output=True, text=True, timeout=180, cwd="/"
    )


def report_of(out: subprocess.CompletedProcess) -> dict:
    assert out.stdout.startswith("{"), out.stdout + out.stderr
    return json.loads(out.stdout)


def verdicts(report: dict, via: str) -> dict[str, str]:
    return {c["check"]: c["verdict"] for c in report["checks"] if c["via"] == via}


def enabled_fast(cfg: Path) -> set[str]:
    listed = json.loads(nodecheck(cfg, "list", "--json").stdout)["checks"]
    return {c["id"] for c in listed if c["enabled"] and c["tier"] == "fast"}


def metric_lines(cfg: Path, name: str) -> dict[str, float]:
    text = (cfg.parent / "metrics" / "nodecheck.prom").read_text()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{")
    }


class Agent:
    def __init__(self, tmp_path: Path, argv: list[str], name: str = "agent") -> None:
        self.sock, self.log = tmp_path / f"run-{name}" / "agent.sock", tmp_path / f"{name}.log"
        self.proc = start_agent(argv, self.sock, self.log)

    def events(self, event: str) -> list[dict]:
        found = [json.loads(x) for x in self.log.read_text().splitlines() if x.startswith("{")]
        return [e for e in found if e["event"] == event]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


# --- the canaries themselves ----------------------------------------------------------


def test_every_fast_check_has_a_canary_or_a_stated_reason():
    """A new check without a canary fails here: it would pass its selftest by saying
    nothing."""
    fast = {cid for cid, chk in all_checks().items() if chk.tier == "fast"}
    canaries = all_canaries(all_checks())  # hand-written, or declared by the check
    assert fast - set(canaries) - set(WAIVED) == set()
    assert set(CANARIES) <= set(canaries) <= fast and set(WAIVED) <= fast
    for canary in canaries.values():
        goods = [c for c in canary.cases if c.good]
        assert len(goods) == 1 and len(canary.cases) >= 2, canary.check


def test_canary_data_is_the_real_fixtures():
    """The package ships copies (it cannot read tests/): they must stay the real data."""
    assert (REAL / "kernlog" / "dmesg-ctime-xid94.txt").read_text() == kernlogs.APP_FAULTS
    assert (REAL / "kernlog" / "kmsg-xid119-gsp.txt").read_text() == kernlogs.XID119_GSP
    assert (REAL / "kernlog" / "journal-short-xid79-154.txt").read_text() == kernlogs.XID79_154
    smi = (REAL / "nvidia-smi" / "h100-sxm-565.txt").read_text()
    gpu0 = nvml_data.snapshot()["gpus"][0]
    for text in (
        f"Driver Version                            : {nvml_data.DRIVER}",
        "CUDA Version                              : 12.7",
        f"Product Name                          : {gpu0['name']}",
        f"GPU UUID                              : {gpu0['uuid']}",
        f"Bus Id                            : {gpu0['pci_bus_id']}",
        f"Total                             : {gpu0['memory']['total'] // 1024**2} MiB",
        f"Current Power Limit               : {gpu0['power_limit_mw'] / 1000:.2f} W",
        f"Power Draw                        : {gpu0['power_usage_mw'] / 1000:.2f} W",
        f"GPU Current Temp                  : {gpu0['temperature_c']} C",
    ):
        assert text in smi, text


# --- every enabled check passes its selftest -------------------------------------------


def test_selftest_in_process_passes_every_enabled_check(tmp_path):
    cfg = write_config(tmp_path, NODE_OPTIONS)
    out = nodecheck(cfg, "selftest", "--via", "inprocess", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = report_of(out)
    assert report["ok"] and report["via"] == ["inprocess"]
    got = verdicts(report, "inprocess")
    assert {c for c, v in got.items() if v == "ok"} == enabled_fast(cfg)
    assert all(v in ("ok", "no-canary") for v in got.values()), got
    for check in report["checks"]:
        if check["verdict"] == "no-canary":  # the deep tier: said, and not a failure
            assert check["check"].startswith("deep.") and not check["counts"]
            continue
        bad = [c for c in check["cases"] if not c["good"]]
        good = [c for c in check["cases"] if c["good"]]
        assert [c["outcome"] for c in good] == ["passed"], check
        assert bad and all(c["outcome"] == "caught" for c in bad), check
        # what a hook would have drained with, had it been the node's own reading
        assert all(c["reason"].startswith(f"nodecheck: {check['check']} ") for c in bad)
    # the node's own option values were what the checks were given
    ib_port = next(c for c in report["checks"] if c["check"] == "ib.port")
    assert "mlx5_4/1" in ib_port["cases"][1]["message"]
    assert "200 Gb/sec (4X HDR)" in ib_port["cases"][0]["message"]


def test_selftest_prints_a_table_for_people(tmp_path):
    cfg = write_config(tmp_path)
    out = nodecheck(cfg, "selftest", "--check", "gpu.*", "--check", "deep.gemm")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {line.split()[0]: line.split()[1:4] for line in out.stdout.splitlines()[2:] if line}
    assert rows["gpu.remap"] == ["inprocess", "PASS", "ok"]
    assert rows["deep.gemm"] == ["inprocess", "SKIP", "no-canary"]
    assert "in-process only" in out.stdout  # no agent: said, not hidden
    assert out.stdout.rstrip().splitlines()[-1].startswith("selftest OK: 16 ok, 1 no-canary")


def test_selftest_through_a_real_agent(tmp_path):
    cfg = write_config(tmp_path, NODE_OPTIONS)
    agent = Agent(tmp_path, [*PLAIN, "agent"])
    try:
        out = nodecheck(cfg, "selftest", "--json", sock=agent.sock)  # auto: both paths
        assert out.returncode == 0, out.stdout + out.stderr
        report = report_of(out)
        assert report["ok"] and report["via"] == ["inprocess", "agent"]
        fast = enabled_fast(cfg)
        for via in ("inprocess", "agent"):
            got = verdicts(report, via)
            assert {c for c, v in got.items() if v == "ok"} == fast, (via, got)
        [served] = agent.events("agent_run")
        assert served["phase"] == "selftest"
        # the worker had the probe pool: the canaries ran in the hooks' probe processes
        assert served["probe_pool"] == agent.events("agent_ready")[0]["probe_pool"]
        assert served["probe_pool"]
    finally:
        assert agent.stop() == 0


def test_an_agent_asked_for_must_answer_one_left_dead_is_a_note(tmp_path):
    cfg = write_config(tmp_path)
    dead = tmp_path / "dead.sock"  # the socket file of an agent that died
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(dead))
    out = nodecheck(cfg, "selftest", "--via", "both", "--check", "host.mem", "--json", sock=dead)
    assert out.returncode == 1
    report = report_of(out)
    assert not report["ok"] and report["problems"][0].startswith("agent: cannot connect")
    # auto: the hooks run in-process without an agent, and so does the selftest, saying so
    out = nodecheck(cfg, "selftest", "--check", "host.mem", "--json", sock=dead)
    assert out.returncode == 0, out.stdout
    report = report_of(out)
    assert report["via"] == ["inprocess"] and report["notes"][0].startswith("agent: cannot")


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed")
def test_the_documented_alert_rules_load(tmp_path):
    doc = (REPO / "docs" / "selftest.md").read_text()
    rules = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "rules.yml").write_text(rules)
    out = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")], text=True,
                         capture_output=True)  # fmt: skip
    assert out.returncode == 0 and "SUCCESS: 3 rules found" in out.stdout, out.stdout + out.stderr


# --- broken checks are reported ----------------------------------------------------------


def test_blinding_options_are_missed_and_a_hair_trigger_fires(tmp_path):
    """A site option that hides a check's fault (Xids ignored, the error counters not
    read) is a missed canary; one that fails a healthy GPU fires on the good one."""
    cfg = write_config(tmp_path, BLINDING)
    out = nodecheck(cfg, "selftest", "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    got = verdicts(report_of(out), "inprocess")
    assert got.pop("gpu.xid") == "missed-bad"
    assert got.pop("ib.counters") == "missed-bad"
    assert got.pop("gpu.thermal") == "fired-on-good"
    assert set(got.values()) == {"ok", "no-canary"}  # the others are unaffected
    # and the metrics say which
    ok = metric_lines(cfg, "nodecheck_selftest_ok")
    assert ok['nodecheck_selftest_ok{check="gpu.xid",node="n1"}'] == 0
    assert ok['nodecheck_selftest_ok{check="gpu.thermal",node="n1"}'] == 0
    assert ok['nodecheck_selftest_ok{check="gpu.remap",node="n1"}'] == 1
    assert not any("deep." in key for key in ok)  # no canary, no alert


BROKEN = ("gpu.remap", "host.mounts", "host.disk")


def expect_broken(report: dict, via: str) -> None:
    got = verdicts(report, via)
    assert got == {
        "gpu.remap": "missed-bad",  # always PASS
        "host.mounts": "fired-on-good",  # always FAIL
        "host.disk": "error",  # raises: an ERROR on a canary fails the selftest
        "gpu.ecc": "ok",  # an unbroken neighbour
    }, got
    remap = next(c for c in report["checks"] if c["check"] == "gpu.remap" and c["via"] == via)
    assert remap["detail"].startswith("gpu3 row remap pending: PASS")


def test_a_check_broken_in_code_is_reported_in_process(tmp_path):
    cfg = write_config(tmp_path)
    picks = [arg for cid in (*BROKEN, "gpu.ecc") for arg in ("--check", cid)]
    out = nodecheck(cfg, "selftest", "--via", "inprocess", "--json", *picks, argv=launcher(*BROKEN))
    assert out.returncode == 1, out.stdout + out.stderr
    expect_broken(report_of(out), "inprocess")
    # the same command without the breakage passes: the failure was the checks'
    clean = nodecheck(cfg, "selftest", "--via", "inprocess", *picks)
    assert clean.returncode == 0, clean.stdout


def test_a_check_broken_in_the_agent_is_reported_through_it(tmp_path):
    """The agent's own code runs the canaries (its worker and probe pool): a check broken
    there is caught by a client whose own copy is fine."""
    cfg = write_config(tmp_path)
    agent = Agent(tmp_path, [*launcher(*BROKEN), "agent"])
    try:
        picks = [arg for cid in (*BROKEN, "gpu.ecc") for arg in ("--check", cid)]
        out = nodecheck(cfg, "selftest", "--json", *picks, sock=agent.sock)
        assert out.returncode == 1, out.stdout + out.stderr
        report = report_of(out)
        expect_broken(report, "agent")
        assert set(verdicts(report, "inprocess").values()) == {"ok"}
    finally:
        assert agent.stop() == 0


def test_a_hanging_check_cannot_hold_the_selftest(tmp_path):
    cfg = write_config(tmp_path)
    started = time.monotonic()
    out = nodecheck(
        cfg,
        "selftest",
        "--via",
        "inprocess",
        "--json",
        "--timeout",
        "4.5",
        "--check",
        "host.mem",
        "--check",
        "host.disk",
        argv=launcher("host.mem"),
    )
    assert time.monotonic() - started < 12
    assert out.returncode == 1
    got = report_of(out)
    [mem] = [c for c in got["checks"] if c["check"] == "host.mem"]
    assert mem["verdict"] == "fired-on-good" and "probe hung" in mem["detail"]
    [disk] = [c for c in got["checks"] if c["check"] == "host.disk"]
    assert disk["verdict"] == "error" and "time limit" in disk["detail"]


# --- the node is left alone ---------------------------------------------------------------


def files_of(directory: Path) -> dict[str, tuple]:
    out = {}
    for path in sorted([directory, *directory.rglob("*")]):
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(directory))] = (st.st_size, st.st_mtime_ns, digest)
    return out


def test_selftest_leaves_state_log_and_slurm_alone(tmp_path, recorder):
    scontrol, calls = recorder
    cfg = write_config(tmp_path, scontrol=str(scontrol))
    # The node has lived: a prolog left its history, its Xid cursor and log lines.
    prolog = nodecheck(cfg, "hook", "prolog", SLURM_JOB_ID="7")
    assert prolog.returncode == 0, prolog.stderr
    state, log, work = tmp_path / "state", tmp_path / "nodecheck.log", tmp_path / "tmp"
    work.mkdir()
    before, log_before = files_of(state), log.read_bytes()
    assert "state.sqlite" in before and log_before
    agent = Agent(tmp_path, [*PLAIN, "agent"])
    try:
        # In-process, in one process that then says whether the Slurm backend was loaded.
        probe = (
            "import sys; from nodecheck.entry.cli import main; code = main(sys.argv[1:]); "
            "print('SLURM LOADED' if 'nodecheck.slurm' in sys.modules else 'slurm never loaded');"
            " sys.exit(code)"
        )
        argv = [sys.executable, "-I", "-c", probe]
        out = nodecheck(cfg, "selftest", argv=argv, sock=agent.sock, TMPDIR=str(work))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "via inprocess + agent" in out.stdout
        assert out.stdout.rstrip().endswith("slurm never loaded")
    finally:
        assert agent.stop() == 0
    assert files_of(state) == before  # not a cursor, baseline, history row or marker
    assert log.read_bytes() == log_before  # not a line about a canary GPU
    assert not calls.exists()  # not one scontrol call
    assert not list(work.iterdir())  # the canaries' files went with them


# --- metrics ------------------------------------------------------------------------------


def test_selftest_series_survive_every_rewrite_of_the_metrics_file(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    path = tmp_path / "nodecheck.prom"
    first = metrics.render_selftest("n1", {"gpu.xid": False}, {"ok": 0}, 1000.0, 2.0)
    metrics.write_selftest(path, first)
    metrics.write_textfile(path, metrics.render("n1", {}, {}, None))  # what a hook writes
    second = metrics.render_selftest("n1", {"gpu.xid": True}, {"ok": 1}, 2000.0, 2.0)
    metrics.write_selftest(path, second)
    metrics.write_textfile(path, metrics.render("n1", {}, {}, None))
    text = path.read_text()
    families = [f.name for f in text_string_to_metric_families(text)]
    assert len(families) == len(set(families))  # each family once: the collector accepts it
    assert 'nodecheck_selftest_ok{check="gpu.xid",node="n1"} 1.0' in text
    assert 'nodecheck_selftest_last_run_timestamp_seconds{node="n1"} 2000.0' in text
    assert "nodecheck_build_info" in text


def test_a_hook_keeps_the_selftest_metrics(tmp_path, recorder):
    scontrol, calls = recorder
    cfg = write_config(tmp_path, "metrics_on_job_path = true\n", scontrol=str(scontrol))
    assert nodecheck(cfg, "selftest", "--via", "inprocess").returncode == 0
    assert nodecheck(cfg, "hook", "prolog", SLURM_JOB_ID="8").returncode == 0
    text = (tmp_path / "metrics" / "nodecheck.prom").read_text()
    assert 'nodecheck_run_status{node="n1",phase="prolog",status="PASS"} 1.0' in text
    ok = metric_lines(cfg, "nodecheck_selftest_ok")
    assert ok['nodecheck_selftest_ok{check="gpu.remap",node="n1"}'] == 1
    assert not calls.exists()


# --- the agent's own selftest ---------------------------------------------------------------


def test_the_agent_runs_its_own_selftest_and_stops_promptly(tmp_path):
    cfg = write_config(tmp_path)
    work = tmp_path / "tmp"
    work.mkdir()
    env = {"NODECHECK_CONFIG": str(cfg), "SLURMD_NODENAME": "n1", "TMPDIR": str(work)}
    argv = [*launcher(environ=env), "agent", "--selftest-delay", "0", "--selftest-every", "3"]
    agent = Agent(tmp_path, argv)
    try:
        deadline = time.monotonic() + 90
        while not agent.events("selftest") and time.monotonic() < deadline:
            time.sleep(0.2)
        [done, *_] = agent.events("selftest") or [agent.log.read_text()]
        assert isinstance(done, dict), done  # the agent's log, when it never said
        assert done["ok"] and done["via"] == ["inprocess", "agent"], done
        assert done["counts"]["ok"] == len(enabled_fast(cfg))
        assert metric_lines(cfg, "nodecheck_selftest_ok")
        assert any(e["phase"] == "selftest" for e in agent.events("agent_run"))
        # The next one starts 3 s later; stop in the middle of it.
        while len(agent.events("agent_selftest")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        started = time.monotonic()
        assert agent.stop() == 0
    assert time.monotonic() - started < 5
    assert not list(work.iterdir())  # the stopped selftest took its files with it


def test_the_shipped_example_config_passes_its_selftest(tmp_path):
    """What the package's postinst runs, under the config it installs: the example requires
    one daemon (munged), so "the first required daemon gone" leaves a /proc with no daemon
    at all; the canary /proc still has init, as every Linux does (psutil needs a process)."""
    from tests.fixtures.healthy import example_config

    cfg = tmp_path / "nodecheck.toml"
    cfg.write_text(example_config(tmp_path, Path("/bin/false"), "real", Path("/sys")))
    cfg.chmod(0o644)
    out = nodecheck(cfg, "selftest", "--via", "inprocess", "--json")
    report = report_of(out)
    wrong = {c: v for c, v in verdicts(report, "inprocess").items() if v not in ("ok", "no-canary")}
    assert out.returncode == 0 and wrong == {}, out.stdout[-3000:]
