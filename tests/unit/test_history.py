"""Node history: records, retention, hysteresis, resume after N passes, flap control,
corruption and concurrent prologs on one node."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodecheck.checks.registry import all_checks
from nodecheck.core.node import NodeInfo
from nodecheck.core.reason import (
    MAX_REASON,
    flapping_prefix,
    flapping_reason,
    format_reason,
    is_flapping_message,
    parse_reason,
)
from nodecheck.core.results import CheckResult, Status
from nodecheck.run import pipeline as app
from nodecheck.run.breaker import RATE_SLOT
from nodecheck.run.config import parse_config
from nodecheck.run.config_checks import Hysteresis
from nodecheck.run.config_file import ConfigError
from nodecheck.slurm import set_call_deadline
from nodecheck.slurm.claims import Claim, PartitionInfo
from nodecheck.store import history, state
from nodecheck.store.state import STATE_FILE, is_corruption

REPO = Path(__file__).resolve().parents[2]
FAIL = CheckResult("host.mounts", Status.FAIL, "not mounted", "/scratch")
PASS = CheckResult("host.mounts", Status.PASS, "mounted", "/scratch")
# Counters of the quarantine loop's events, untouched by the hooks.
NO_VALIDATIONS = {
    "validations_passed": 0,
    "validations_failed": 0,
    "validations_not_possible": 0,
    "reboots": 0,
}


def rec(status="PASS", phase="prolog", results=(), at=None, action="none"):
    return history.RunRecord(
        at=time.time() if at is None else at,
        phase=phase,
        job="7",
        status=status,
        action=action,
        duration_s=0.1,
        results=tuple(results),
    )


def add(state_dir, record, retention=history.Retention()):
    def work(h):
        with h.write():
            h.add_run(record, retention)

    history.with_history(state_dir, work)


def test_runs_and_findings_are_recorded(tmp_path):
    warn = CheckResult("ib.counters", Status.WARN, "symbol_error +3", "mlx5_0/1")
    add(tmp_path, rec("FAIL", results=[FAIL, warn, PASS], action="drained"))
    [run] = history.with_history(tmp_path, lambda h: h.runs())
    assert run["phase"] == "prolog" and run["job"] == "7" and run["action"] == "drained"
    assert {(f["check"], f["component"], f["status"]) for f in run["findings"]} == {
        ("host.mounts", "/scratch", "FAIL"),
        ("ib.counters", "mlx5_0/1", "WARN"),
    }
    assert (tmp_path / STATE_FILE).stat().st_mode & 0o777 == 0o600


def test_retention_keeps_the_last_rows_and_drops_old_ones(tmp_path):
    keep = history.Retention(max_rows=10, max_age_s=3600, lifecycle_age_s=3600)
    now = time.time()
    for i in range(25):
        add(tmp_path, rec("FAIL", results=[FAIL], at=now - 25 + i), keep)
    runs = history.with_history(tmp_path, lambda h: h.runs(limit=100))
    assert len(runs) == 10
    add(tmp_path, rec(at=now + 7200), keep)  # two hours later: everything else is too old
    assert len(history.with_history(tmp_path, lambda h: h.runs(limit=100))) == 1
    orphans = history.with_history(
        tmp_path,
        lambda h: h.conn.execute(
            "SELECT count(*) FROM findings WHERE run_id NOT IN (SELECT id FROM runs)"
        ).fetchone()[0],
    )
    assert orphans == 0


def test_hysteresis_turns_the_kth_warn_within_the_window_into_a_fail(tmp_path):
    rules = {"ib.counters": Hysteresis(warn_count=3, window_s=3600)}
    warn = CheckResult("ib.counters", Status.WARN, "symbol_error +3", "mlx5_0/1")
    other = CheckResult("ib.counters", Status.WARN, "symbol_error +3", "mlx5_1/1")
    now = time.time()
    add(tmp_path, rec("WARN", results=[warn], at=now - 7200))  # outside the window
    add(tmp_path, rec("WARN", results=[warn, other], at=now - 60))

    def judge(results):
        return history.with_history(tmp_path, lambda h: history.escalate(results, h, rules, now))

    [second, other_second] = judge([warn, other])
    assert second.status is Status.WARN and other_second.status is Status.WARN
    add(tmp_path, rec("WARN", results=[warn], at=now - 30))
    [third, other_again] = judge([warn, other])
    assert third.status is Status.FAIL
    assert third.message == "warned 3x in 1h: symbol_error +3"
    assert third.values["escalated_from"] == "WARN"
    assert other_again.status is Status.WARN  # another port: its own count
    # A check without a rule is never escalated.
    mem = CheckResult("host.mem", Status.WARN, "low", "node")
    assert judge([mem])[0].status is Status.WARN


def test_hysteresis_config_is_validated():
    registry = all_checks()
    cfg = parse_config(
        {"hysteresis": {"host.mem": {"warn_count": 3, "window_s": 600}}}, None, registry
    )
    assert cfg.hysteresis == {"host.mem": Hysteresis(3, 600.0)}
    bad = [
        {"hysteresis": {"gpu.nosuch": {"warn_count": 3, "window_s": 600}}},
        {"hysteresis": {"host.mem": {"warn_count": 1, "window_s": 600}}},
        {"hysteresis": {"host.mem": {"warn_count": 3}}},
        {"hysteresis": {"host.mem": {"warn_count": 3, "window_s": 600, "x": 1}}},
        {"hysteresis": {"host.mem": {"warn_count": True, "window_s": 600}}},
        {"flap_max_drains": -1},
        {"flap_window_s": 0},
        {"history_max_rows": 5},
        {"metrics_file": 3},
    ]
    for data in bad:
        with pytest.raises(ConfigError):
            parse_config(data, None, registry)


def test_health_pass_streak_stops_at_the_last_fail(tmp_path):
    now = time.time()
    add(tmp_path, rec("PASS", "health", at=now - 50))
    add(tmp_path, rec("FAIL", "health", [FAIL], at=now - 40))
    add(tmp_path, rec("PASS", "health", at=now - 30))
    add(tmp_path, rec("ERROR", "health", at=now - 25))  # neither counts nor breaks
    add(tmp_path, rec("PASS", "epilog", at=now - 22))  # only health passes count
    add(tmp_path, rec("WARN", "health", at=now - 20))
    streak = history.with_history(tmp_path, lambda h: h.health_passes_since(now - 100))
    assert streak == 2


def test_flapping_reason_stays_parseable_and_bounded():
    reason = format_reason([FAIL], "prolog", "12")
    flap = flapping_reason(reason, flapping_prefix(4, 86400))
    assert flap.startswith("nodecheck: host.mounts /scratch: flapping (drained 4x in 24h) ")
    parsed = parse_reason(flap)
    assert parsed and parsed.check_id == "host.mounts" and parsed.component == "/scratch"
    assert is_flapping_message(parsed.message) and parsed.job_id == "12"
    again = flapping_reason(flap, flapping_prefix(5, 86400))
    assert again.count("flapping") == 1 and "drained 5x in 24h" in again
    long = format_reason([CheckResult("host.mounts", Status.FAIL, "x" * 400, "/s")], "epilog", "1")
    assert len(flapping_reason(long, flapping_prefix(4, 3600))) <= MAX_REASON
    assert parse_reason(flapping_reason(long, "flapping (drained 4x in 1h)"))


def test_a_garbage_state_file_is_set_aside_and_recreated(tmp_path):
    tmp_path.chmod(0o700)
    (tmp_path / STATE_FILE).write_bytes(b"this is not sqlite at all" * 100)
    add(tmp_path, rec())
    assert len(history.with_history(tmp_path, lambda h: h.runs())) == 1
    assert list(tmp_path.glob(f"{STATE_FILE}.corrupt-*"))
    assert not is_corruption(sqlite3.OperationalError("database is locked"))


def test_an_integrity_error_is_not_corruption_and_keeps_the_state(tmp_path):
    tmp_path.chmod(0o700)
    history.with_history(tmp_path, lambda h: h.store.put_json("drain-marker", {"reason": "r"}))

    def bad_row(h):
        with h.write():
            h.conn.execute(
                "INSERT INTO findings(run_id, at, check_id, component, status) "
                "VALUES (1, 0, 'x', NULL, 'FAIL')"
            )

    with pytest.raises(history.StateError):
        history.with_history(tmp_path, bad_row)
    assert not list(tmp_path.glob(f"{STATE_FILE}.corrupt-*"))
    kept = history.with_history(tmp_path, lambda h: h.store.get_json("drain-marker"))
    assert kept == {"reason": "r"}


def test_a_damaged_page_is_corruption(tmp_path):
    tmp_path.chmod(0o700)
    add(tmp_path, rec())
    db = tmp_path / STATE_FILE
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(db.read_bytes())
    page = 4096
    data[page : 2 * page] = b"\xff" * page  # the second page: a table's b-tree header
    db.write_bytes(bytes(data))
    add(tmp_path, rec())
    assert list(tmp_path.glob(f"{STATE_FILE}.corrupt-*"))


def test_a_result_without_a_component_is_refused_where_it_is_made():
    with pytest.raises(TypeError, match="component"):
        CheckResult("gpu.xid", Status.FAIL, "Xid 79", None)  # type: ignore[arg-type]


def test_read_only_history_never_creates_anything(tmp_path):
    assert history.read_only_history(tmp_path / "none", lambda h: h.counters()) is None
    assert not (tmp_path / "none").exists()
    add(tmp_path, rec())
    assert history.read_only_history(tmp_path, lambda h: len(h.runs())) == 1


# -- the lifecycle through app.execute, with a fake controller ------------------------------


class FakeSlurm:
    name = "fake"

    def __init__(self, nodes=("n1",)):
        self.nodes = {n: NodeInfo(n, ("IDLE",)) for n in nodes}
        self.calls: list[tuple[str, str]] = []
        self.slots: dict[str, Claim] = {}

    def node_info(self, node):
        self.calls.append(("info", node))
        return self.nodes[node]

    def list_nodes(self):
        self.calls.append(("list", ""))
        return list(self.nodes.values())

    def drain(self, node, reason):
        self.calls.append(("drain", node))
        self.nodes[node] = NodeInfo(node, ("IDLE", "DRAIN"), reason, "root", "2026-11-25T10:00:00")

    def resume(self, node):
        self.calls.append(("resume", node))
        self.nodes[node] = NodeInfo(node, ("IDLE",))

    # The breaker's slots (nodecheck/slurm/claims.py), kept as slurmctld would: a name
    # exists once, a second claim of it is refused.
    def claims(self):
        self.calls.append(("claims", ""))
        return list(self.slots.values())

    def claim(self, name, node, minutes):
        self.calls.append(("claim", name))
        if name in self.slots:
            return False
        self.slots[name] = Claim(name, node, "2026-11-25T10:00:00", "2026-11-25T10:10:00")
        return True

    def release(self, name):
        self.calls.append(("release", name))
        self.slots.pop(name, None)

    def drained_elsewhere(self, info):
        """Another node nodecheck drained within the window: its drain and its rate slot."""
        self.nodes[info.name] = info
        name = f"{RATE_SLOT}{len(self.slots)}"
        self.slots[name] = Claim(name, info.name, "2026-11-25T10:00:00", "2026-11-25T10:10:00")
        return name

    def partition(self, name):
        self.calls.append(("partition", name))
        return PartitionInfo(name, ",".join(self.nodes), len(self.nodes))


@pytest.fixture
def lifecycle(tmp_path, monkeypatch):
    """Run hook phases in-process with canned check results and a fake controller."""
    fake = FakeSlurm()
    monkeypatch.setattr("nodecheck.run.act.backend_for", lambda config, env: fake)
    canned: list[list[CheckResult]] = [[PASS]]
    monkeypatch.setattr(app, "run_checks", lambda planned, budget, mem, started: list(canned[0]))

    def configure(extra=""):
        # No random wait before drains unless a test asks for one.
        jitter = "" if "breaker_jitter_s" in extra else "breaker_jitter_s = 0\n"
        path = tmp_path / "nodecheck.toml"
        path.write_text(
            f'state_dir = "{tmp_path}/state"\nmetrics_file = "{tmp_path}/m.prom"\n'
            f'killswitch_file = "{tmp_path}/off"\nlog_file = ""\n{jitter}{extra}'
        )
        return path

    class Run:
        fake_slurm = fake
        state_dir = tmp_path / "state"

        def __init__(self):
            self.config = configure()

        def set_config(self, extra):
            self.config = configure(extra)

        def __call__(self, phase, results, job="5"):
            canned[0] = results
            env = (
                {"SLURMD_NODENAME": "n1", "SLURM_JOB_ID": job}
                if phase != "health"
                else {"SLURMD_NODENAME": "n1"}
            )
            return app.execute(
                app.RunRequest(phase=phase, env=env, config_path=str(self.config), act=True)
            )

    yield Run()
    # A run's budget must not outlive it into other tests: the state's, and the controller's.
    state.set_run_deadline(None)
    set_call_deadline(None)


def test_healthy_prolog_makes_no_controller_call_and_writes_one_run(lifecycle):
    out = lifecycle("prolog", [PASS])
    assert out.action_taken == "none" and lifecycle.fake_slurm.calls == []
    out = lifecycle("health", [PASS])
    assert out.action_taken == "none" and lifecycle.fake_slurm.calls == []
    runs = history.with_history(lifecycle.state_dir, lambda h: h.runs())
    assert [r["phase"] for r in runs] == ["health", "prolog"]


def test_the_breaker_jitter_is_the_configured_one(lifecycle, monkeypatch):
    spreads = []
    monkeypatch.setattr(
        "nodecheck.run.breaker.random.uniform", lambda low, high: spreads.append(high) or 0.0
    )
    assert lifecycle("prolog", [FAIL]).action_taken == "drained"
    assert spreads == [0.0]  # breaker_jitter_s = 0 in these tests: no random wait
    assert ("claims", "") in lifecycle.fake_slurm.calls  # the breaker reads its slots once
    lifecycle.set_config("breaker_jitter_s = 1.5\n")
    lifecycle.fake_slurm.resume("n1")
    history.with_history(
        lifecycle.state_dir, lambda h: h.store.put_json(history.DRAIN_MARKER, None)
    )
    lifecycle("prolog", [FAIL])
    assert spreads[-1] == 1.5


def test_drain_then_resume_after_n_health_passes(lifecycle):
    lifecycle.set_config("resume_after_passes = 3\n")
    assert lifecycle("prolog", [FAIL]).action_taken == "drained"
    assert lifecycle.fake_slurm.nodes["n1"].drained_by_nodecheck
    assert lifecycle("health", [PASS]).action_taken == "passed 1/3 before resume"
    calls = len(lifecycle.fake_slurm.calls)
    # still broken: the streak resets, and the drain already there is left as it is
    assert lifecycle("health", [FAIL]).action_taken == "already drained"
    assert ("drain", "n1") not in lifecycle.fake_slurm.calls[calls:]
    assert lifecycle("health", [PASS]).action_taken == "passed 1/3 before resume"
    assert lifecycle("health", [PASS]).action_taken == "passed 2/3 before resume"
    assert lifecycle("health", [PASS]).action_taken == "resumed"
    assert not lifecycle.fake_slurm.nodes["n1"].drained
    calls = len(lifecycle.fake_slurm.calls)
    assert lifecycle("health", [PASS]).action_taken == "none"
    assert len(lifecycle.fake_slurm.calls) == calls  # marker gone: no controller call
    counters = history.with_history(lifecycle.state_dir, lambda h: h.counters())
    assert counters == {
        "drains": 1,
        "resumes": 1,
        "flap_holds": 0,
        "breaker_trips": 0,
        **NO_VALIDATIONS,
    }


def test_xid_drains_wait_for_a_human(lifecycle):
    xid = CheckResult("gpu.xid", Status.FAIL, "Xid 119 (GSP RPC timeout)", "gpu2")
    assert lifecycle("prolog", [xid]).action_taken == "drained"
    for _ in range(3):  # the XID is behind the cursor now: the checks pass
        assert lifecycle("health", [PASS]).action_taken == "held: gpu.xid needs a manual resume"
    assert lifecycle.fake_slurm.nodes["n1"].drained_by_nodecheck
    lifecycle.fake_slurm.resume("n1")  # an admin looked and resumed it
    assert lifecycle("health", [PASS]).action_taken == "not drained"
    assert lifecycle("health", [PASS]).action_taken == "none"


def test_admin_drain_is_never_touched(lifecycle):
    lifecycle.fake_slurm.nodes["n1"] = NodeInfo("n1", ("IDLE", "DRAIN"), "PSU swap", "admin")
    assert lifecycle("prolog", [FAIL]).action_taken == "admin drain kept"
    for _ in range(3):
        assert lifecycle("health", [PASS]).action_taken == "none"
    assert lifecycle.fake_slurm.nodes["n1"].reason == "PSU swap"
    assert ("resume", "n1") not in lifecycle.fake_slurm.calls


def test_admin_takes_over_our_drain_and_we_let_go(lifecycle):
    lifecycle("prolog", [FAIL])
    lifecycle.fake_slurm.nodes["n1"] = NodeInfo("n1", ("IDLE", "DRAIN"), "RMA", "admin")
    assert lifecycle("health", [PASS]).action_taken == "refused: drained by someone else"
    assert lifecycle.fake_slurm.nodes["n1"].reason == "RMA"
    assert lifecycle("health", [PASS]).action_taken == "none"  # marker cleared


def test_a_flapping_node_stays_drained_with_a_flapping_reason(lifecycle):
    lifecycle.set_config("flap_max_drains = 2\nflap_window_s = 3600\n")
    for _ in range(2):
        assert lifecycle("prolog", [FAIL]).action_taken == "drained"
        assert lifecycle("health", [PASS]).action_taken == "resumed"
    assert lifecycle("epilog", [FAIL]).action_taken == "drained (flapping)"
    reason = lifecycle.fake_slurm.nodes["n1"].reason
    assert reason.startswith("nodecheck: host.mounts /scratch: flapping (drained 3x in 1h) ")
    assert parse_reason(reason).check_id == "host.mounts"
    for _ in range(3):
        assert lifecycle("health", [PASS]).action_taken == "held: flapping"
    assert lifecycle.fake_slurm.nodes["n1"].drained_by_nodecheck
    # Failing again while held keeps the flapping reason and does not count a new episode.
    assert lifecycle("health", [FAIL]).action_taken == "already drained (flapping)"
    assert "flapping (drained 3x in 1h)" in lifecycle.fake_slurm.nodes["n1"].reason
    counters = history.with_history(lifecycle.state_dir, lambda h: h.counters())
    assert counters == {
        "drains": 3,
        "resumes": 2,
        "flap_holds": 1,
        "breaker_trips": 0,
        **NO_VALIDATIONS,
    }
    # The admin resumes it by hand: the hold ends, nodecheck forgets its marker.
    lifecycle.fake_slurm.resume("n1")
    assert lifecycle("health", [PASS]).action_taken == "not drained"
    assert lifecycle("health", [PASS]).action_taken == "none"


def test_flap_control_off_with_zero(lifecycle):
    lifecycle.set_config("flap_max_drains = 0\n")
    for _ in range(5):
        assert lifecycle("prolog", [FAIL]).action_taken == "drained"
        assert lifecycle("health", [PASS]).action_taken == "resumed"


def test_hysteresis_through_a_run(lifecycle):
    lifecycle.set_config('[hysteresis."host.mem"]\nwarn_count = 2\nwindow_s = 600\n')
    warn = CheckResult("host.mem", Status.WARN, "usable 90% of expected", "node")
    first = lifecycle("prolog", [warn])
    assert first.verdict.status is Status.WARN and first.action_taken == "none"
    second = lifecycle("prolog", [warn])
    assert second.verdict.status is Status.FAIL and second.action_taken == "drained"
    assert second.verdict.reason.startswith(
        "nodecheck: host.mem node: warned 2x in 10m: usable 90% of expected"
    )


def test_manual_runs_and_dry_runs(lifecycle):
    lifecycle.set_config("dry_run = true\n")
    assert lifecycle("prolog", [FAIL]).action_taken == "would drain"
    assert lifecycle.fake_slurm.calls == []
    [run] = history.with_history(lifecycle.state_dir, lambda h: h.runs())
    assert run["action"] == "would drain" and run["status"] == "FAIL"


def test_a_drain_of_ecc_and_xid_is_held_for_a_human(lifecycle):
    """The hold looks at every failure of the drain, not only the leading one (13.8)."""
    ecc = CheckResult("gpu.ecc", Status.FAIL, "2 DBE", "gpu1", severity="critical")
    xid = CheckResult("gpu.xid", Status.FAIL, "Xid 79", "gpu3", severity="high")
    out = lifecycle("prolog", [ecc, xid])
    assert out.action_taken == "drained" and parse_reason(out.verdict.reason).check_id == "gpu.ecc"
    marker = history.with_history(lifecycle.state_dir, lambda h: h.store.get_json("drain"))
    assert marker["checks"] == ["gpu.ecc", "gpu.xid"]
    for _ in range(2):
        assert lifecycle("health", [PASS]).action_taken == "held: gpu.xid needs a manual resume"
    assert lifecycle.fake_slurm.nodes["n1"].drained_by_nodecheck


def test_breaker_open_fails_open_and_is_recorded_then_drains_once_closed(lifecycle):
    """Another node drained by nodecheck a minute ago and a rate limit of 1: the breaker is
    open. The prolog exits 0 (the job runs), nothing is drained, the hold is in the history
    and the metrics file; once the other node is back, the health run drains this one."""
    other = NodeInfo(
        "n2",
        ("IDLE", "DRAIN"),
        "nodecheck: gpu.ecc gpu1: 2 DBE [prolog job 3]",
        "root",
        time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60)),
    )
    slot = lifecycle.fake_slurm.drained_elsewhere(other)
    lifecycle.set_config("breaker_max_drains = 1\nbreaker_max_share = 0\n")
    out = lifecycle("prolog", [FAIL])
    assert (out.action_taken, out.verdict.exit_code) == ("breaker open", 0)
    assert not lifecycle.fake_slurm.nodes["n1"].drained
    assert ("drain", "n1") not in lifecycle.fake_slurm.calls
    held = history.with_history(lifecycle.state_dir, lambda h: h.store.get_json("breaker_hold"))
    assert held["reason"] == out.verdict.reason and "limit 1" in held["why"]
    first_since = held["since"]
    assert lifecycle("epilog", [FAIL]).verdict.exit_code == 0
    again = history.with_history(lifecycle.state_dir, lambda h: h.store.get_json("breaker_hold"))
    assert again["since"] == first_since  # held since the first failure, not the latest
    prom = (lifecycle.state_dir.parent / "m.prom").read_text()
    assert 'nodecheck_breaker_held{node="n1"} 1.0' in prom
    assert 'nodecheck_breaker_trips_total{node="n1"} 2.0' in prom
    # "fail" keeps fail-closed: exit 1, still no drain by nodecheck.
    lifecycle.set_config(
        'breaker_max_drains = 1\nbreaker_max_share = 0\nbreaker_open_action = "fail"\n'
    )
    assert lifecycle("prolog", [FAIL]).verdict.exit_code == 1
    assert not lifecycle.fake_slurm.nodes["n1"].drained
    # The other node's slot ends with the window (Slurm deletes the reservation): the
    # breaker closes, the still-failing node drains.
    lifecycle.fake_slurm.resume("n2")
    lifecycle.fake_slurm.slots.pop(slot)
    out = lifecycle("health", [FAIL])
    assert out.action_taken == "drained"
    assert parse_reason(lifecycle.fake_slurm.nodes["n1"].reason).held_since == str(int(first_since))
    assert (
        history.with_history(lifecycle.state_dir, lambda h: h.store.get_json("breaker_hold"))
        is None
    )
    prom = (lifecycle.state_dir.parent / "m.prom").read_text()
    assert 'nodecheck_breaker_held{node="n1"} 0.0' in prom


def just_drained(name: str) -> NodeInfo:
    """Another node, drained by nodecheck this second (Slurm's local ISO reason time)."""
    return NodeInfo(
        name,
        ("IDLE", "DRAIN"),
        "nodecheck: a.b c: d [health]",
        "root",
        time.strftime("%Y-%m-%dT%H:%M:%S"),
    )


def test_a_breaker_hold_alerts_once_when_it_starts(lifecycle):
    """A real HTTP peer standing in for Alertmanager's POST /api/v2/alerts."""
    import http.server
    import threading

    bodies: list[list[dict]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            size = int(self.headers["Content-Length"])
            bodies.append(json.loads(self.rfile.read(size)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        lifecycle.fake_slurm.drained_elsewhere(just_drained("n2"))
        url = f"http://127.0.0.1:{server.server_address[1]}"
        lifecycle.set_config(
            f'breaker_max_drains = 1\nbreaker_max_share = 0\nalert_url = "{url}"\n'
        )
        assert lifecycle("prolog", [FAIL]).action_taken == "breaker open"
        assert lifecycle("epilog", [FAIL]).action_taken == "breaker open"  # same hold
    finally:
        server.shutdown()
    [[alert]] = bodies
    assert alert["labels"]["action"] == "breaker-held" and alert["labels"]["node"] == "n1"
    assert alert["labels"]["check"] == "host.mounts"
    assert "not drained, jobs run" in alert["annotations"]["summary"]


def test_a_held_back_node_whose_failure_vanished_is_left_alone(lifecycle):
    lifecycle.fake_slurm.drained_elsewhere(just_drained("n2"))
    lifecycle.set_config("breaker_max_drains = 1\nbreaker_max_share = 0\n")
    assert lifecycle("prolog", [FAIL]).action_taken == "breaker open"
    calls = len(lifecycle.fake_slurm.calls)
    assert lifecycle("health", [PASS]).action_taken == "none"
    assert len(lifecycle.fake_slurm.calls) == calls  # no controller call
    assert (
        history.with_history(lifecycle.state_dir, lambda h: h.store.get_json("breaker_hold"))
        is None
    )
    assert not lifecycle.fake_slurm.nodes["n1"].drained


def test_an_unreachable_controller_leaves_a_pending_failure_to_adopt(lifecycle):
    from nodecheck.slurm import SlurmError

    def down(node, reason):
        raise SlurmError("Unable to contact slurm controller")

    lifecycle.fake_slurm.drain = down
    lifecycle.set_config("budget_s = 2\nbreaker_max_share = 0\nbreaker_max_drains = 0\n")
    out = lifecycle("prolog", [FAIL], job="44")
    assert (out.action_taken, out.verdict.exit_code) == ("drain failed", 1)
    pending = history.with_history(
        lifecycle.state_dir, lambda h: h.store.get_json("pending_failure")
    )
    assert pending["job"] == "44" and pending["phase"] == "prolog"
    assert pending["reason"] == out.verdict.reason


# -- many prologs on one node at once ----------------------------------------------------


def test_concurrent_prologs_leave_a_consistent_history(tmp_path):
    state = tmp_path / "state"
    cfg = tmp_path / "nodecheck.toml"
    cfg.write_text(
        f'state_dir = "{state}"\nmetrics_file = "{tmp_path}/m.prom"\nlog_file = ""\n'
        "metrics_on_job_path = true\n"
        f'killswitch_file = "{tmp_path}/off"\nscontrol = "/bin/false"\n'
        'slurm_backend = "scontrol"\n'
        '[checks."host.mounts"]\nrequired = ["/"]\n'
        '[checks."host.services"]\nenabled = false\n'
        '[checks."host.disk"]\nenabled = false\n'
        '[checks."host.mem"]\nenabled = false\n'
    )
    # Only host.mounts: every run is fast and healthy; the point is 20 writers at once.
    enabled = {"host.mounts"}
    extra = "".join(
        f'[checks."{cid}"]\nenabled = false\n'
        for cid in all_checks()
        if cid not in enabled and f'"{cid}"' not in cfg.read_text()
    )
    cfg.write_text(cfg.read_text() + extra)
    n = 20
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "nodecheck", "hook", "prolog"],
            env={
                "PATH": "/usr/bin:/bin",
                "SLURMD_NODENAME": "n1",
                "SLURM_JOB_ID": str(1000 + i),
                "NODECHECK_CONFIG": str(cfg),
            },
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    for _, err in outs:
        assert "history_not_saved" not in err and "state_corrupt" not in err, err[-2000:]
    conn = sqlite3.connect(state / STATE_FILE)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    jobs = sorted(int(j) for (j,) in conn.execute("SELECT job FROM runs WHERE phase='prolog'"))
    assert jobs == list(range(1000, 1000 + n))
    last = json.loads(conn.execute("SELECT value FROM kv WHERE key='last'").fetchone()[0])
    assert last["runs"]["prolog"]["status"] == "PASS"
    assert not list(state.glob(f"{STATE_FILE}.corrupt-*"))
    assert (tmp_path / "m.prom").stat().st_mode & 0o777 == 0o644


@pytest.fixture
def run_deadline():
    yield state.set_run_deadline
    state.set_run_deadline(None)


def _busy_ms(store) -> int:
    return store.conn.execute("PRAGMA busy_timeout").fetchone()[0]


def test_the_lock_wait_follows_the_callers_timeout_and_the_runs_budget(tmp_path, run_deadline):
    tmp_path.chmod(0o700)
    with state.open_state(tmp_path) as store:
        assert _busy_ms(store) == state.DEFAULT_BUSY_S * 1000
    with state.open_state(tmp_path, timeout_s=2.5) as store:
        assert _busy_ms(store) == 2500  # a check waits no longer than its own timeout
    run_deadline(time.monotonic() + 1.0)
    with state.open_state(tmp_path, timeout_s=2.5) as store:
        assert 0 < _busy_ms(store) <= 1000  # nor past the run's deadline
    run_deadline(time.monotonic() - 0.1)
    with state.open_state(tmp_path, timeout_s=2.5) as store:
        # Past the deadline: the record of a run whose Slurm calls used the whole budget
        # still gets a lock that is free at once, and waits no longer than this for one.
        assert _busy_ms(store) == state.LATE_WAIT_S * 1000
