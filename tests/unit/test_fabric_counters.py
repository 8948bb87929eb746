"""ib.counters: baselines, job windows (prolog -> epilog), resets, unreadable counters."""

from __future__ import annotations

import errno
import time

import pytest
from helpers import make_ctx, options_of

import nodecheck.checks.fabric.counters as fabric
from nodecheck.checks.context import JobInfo
from nodecheck.checks.fabric import counters as counter_probe
from nodecheck.checks.registry import all_checks
from nodecheck.core.results import Status
from nodecheck.probes.fabric.sysfs import ReadFailure
from nodecheck.store import state as state_module
from nodecheck.store.state import open_state
from tests.fixtures.sysfs import FakeSysfs, healthy_node

CHECK = all_checks()["ib.counters"]


class Node:
    """A fake node with its own sysfs, /proc (for boot_id) and state dir."""

    def __init__(self, tmp_path, hcas=2):
        self.sys = healthy_node(tmp_path / "sys", hcas=hcas)
        self.proc = tmp_path / "proc"
        (self.proc / "sys" / "kernel" / "random").mkdir(parents=True)
        self.reboot()
        self.state = tmp_path / "state"

    def reboot(self, boot_id="6f1d6c4e-0d3a-4a0e-9d1f-3c1a2b3c4d5e"):
        (self.proc / "sys" / "kernel" / "random" / "boot_id").write_text(boot_id + "\n")

    def run(self, phase="prolog", job="812", **options):
        ctx = make_ctx(
            phase=phase,
            options=options_of(CHECK, **options),
            job=JobInfo(job_id=job) if job else JobInfo(),
            sysfs_root=self.sys.root,
            procfs_root=self.proc,
            state_dir=self.state,
        )
        return {r.component: r for r in CHECK.func(ctx)}


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path)


def test_first_run_records_a_baseline(node):
    got = node.run()
    assert set(got) == {"mlx5_0/1", "mlx5_1/1"}
    for result in got.values():
        assert result.status is Status.PASS
        assert result.message == "baseline recorded"
        assert result.values["window"] == "baseline"
        assert result.values["counters"]["symbol_error"] == 0


def test_counters_rising_during_a_job_fail_in_the_epilog(node):
    assert node.run("prolog", "812")["mlx5_0/1"].status is Status.PASS
    node.sys.bump_counter("mlx5_0", 1, "link_downed", 3)
    node.sys.bump_counter("mlx5_0", 1, "symbol_error", 250)
    got = node.run("epilog", "812")
    bad = got["mlx5_0/1"]
    assert bad.status is Status.FAIL
    assert bad.message == "symbol_error +250, link_downed +3 during job 812"
    assert bad.values["window"] == "job"
    assert bad.values["rise"] == {"symbol_error": 250, "link_downed": 3}
    assert got["mlx5_1/1"].status is Status.PASS
    assert got["mlx5_1/1"].message == "no rise above thresholds during job 812"


def test_small_rise_is_a_warning_and_thresholds_are_configurable(node):
    node.run("prolog", "900")
    node.sys.bump_counter("mlx5_1", 1, "link_downed", 1)
    got = node.run("epilog", "900")
    assert got["mlx5_1/1"].status is Status.WARN
    assert got["mlx5_1/1"].message == "link_downed +1 during job 900"
    node.run("prolog", "901")
    node.sys.bump_counter("mlx5_1", 1, "link_downed", 1)
    got = node.run("epilog", "901", fail_rise={"link_downed": 0}, warn_rise={})
    assert got["mlx5_1/1"].status is Status.FAIL


def test_hw_counters_are_watched_where_present(node):
    node.run("prolog", "5")
    node.sys.bump_counter("mlx5_0", 1, "rx_icrc_encapsulated", 500, hw=True)
    got = node.run("epilog", "5", hw_counters=["rx_icrc_encapsulated", "not_on_this_driver"])
    assert got["mlx5_0/1"].status is Status.FAIL
    assert got["mlx5_0/1"].message == "rx_icrc_encapsulated +500 during job 5"
    assert got["mlx5_1/1"].values["absent"] == ["not_on_this_driver"]
    assert got["mlx5_1/1"].status is Status.PASS


def test_a_manual_run_looks_without_moving_the_window(node):
    node.run("prolog", "812")
    node.sys.bump_counter("mlx5_0", 1, "symbol_error", 250)
    looked = node.run("manual", None)
    assert looked["mlx5_0/1"].status is Status.FAIL  # the admin sees the rise...
    assert looked["mlx5_0/1"].values["rise"] == {"symbol_error": 250}
    again = node.run("manual", None)
    assert again["mlx5_0/1"].status is Status.FAIL  # ...as often as they look
    got = node.run("epilog", "812")
    assert got["mlx5_0/1"].status is Status.FAIL  # and the hooks still see it
    assert got["mlx5_0/1"].values["window"] == "job"


def test_epilog_of_another_job_uses_the_run_window(node):
    node.run("prolog", "1")
    node.sys.bump_counter("mlx5_0", 1, "port_rcv_errors", 500)
    got = node.run("epilog", "2")
    assert got["mlx5_0/1"].status is Status.FAIL
    assert got["mlx5_0/1"].values["window"] == "run"
    assert got["mlx5_0/1"].message.startswith("port_rcv_errors +500 since last check")


def test_job_window_is_not_confused_by_other_runs_in_between(node):
    node.run("prolog", "10")
    node.sys.bump_counter("mlx5_0", 1, "link_downed", 2)
    node.run("health", None)  # a health check in the middle takes the run window ...
    node.sys.bump_counter("mlx5_0", 1, "link_downed", 1)
    got = node.run("epilog", "10")  # ... but the epilog still sees the whole job
    assert got["mlx5_0/1"].status is Status.FAIL
    assert got["mlx5_0/1"].message == "link_downed +3 during job 10"


def test_counter_reset_is_a_new_baseline_not_an_alarm(node):
    node.sys.set_counter("mlx5_0", 1, "symbol_error", 5000)
    node.run("prolog", "7")
    node.sys.set_counter("mlx5_0", 1, "symbol_error", 3)  # driver reload / perfquery -R
    got = node.run("epilog", "7")
    assert got["mlx5_0/1"].status is Status.PASS
    assert "counter reset (symbol_error), new baseline" in got["mlx5_0/1"].message
    node.sys.bump_counter("mlx5_0", 1, "symbol_error", 20)
    got = node.run("prolog", "8")
    assert got["mlx5_0/1"].values["rise"] == {"symbol_error": 20}
    assert got["mlx5_0/1"].status is Status.WARN


def test_reboot_and_hca_swap_start_new_baselines(node):
    node.run("prolog", "1")
    node.sys.bump_counter("mlx5_0", 1, "symbol_error", 5000)
    node.reboot("00000000-0000-0000-0000-000000000002")
    got = node.run("prolog", "2")
    assert got["mlx5_0/1"].status is Status.PASS
    assert "rebooted" in got["mlx5_0/1"].message
    (node.sys.hcas["mlx5_1"].dev_dir / "node_guid").write_text("0000:0000:0000:beef\n")
    node.sys.bump_counter("mlx5_1", 1, "symbol_error", 5000)
    got = node.run("prolog", "3")
    assert got["mlx5_1/1"].status is Status.PASS
    assert "HCA changed" in got["mlx5_1/1"].message


def test_stale_run_window_is_only_a_baseline(node):
    node.run("prolog", "1")
    node.sys.bump_counter("mlx5_0", 1, "symbol_error", 5000)
    got = node.run("prolog", "2", max_window_s=0)
    assert got["mlx5_0/1"].status is Status.PASS
    assert "new baseline" in got["mlx5_0/1"].message


def test_saturated_counter_warns(node):
    node.sys.set_counter("mlx5_0", 1, "local_link_integrity_errors", 15)
    got = node.run()
    assert got["mlx5_0/1"].status is Status.WARN
    assert "local_link_integrity_errors saturated" in got["mlx5_0/1"].message


@pytest.mark.parametrize(("how", "why"), [("eio", "Input/output error"), ("dir", "Is a directory")])
def test_unreadable_counter_is_a_fail_and_keeps_the_baseline(node, how, why):
    node.sys.set_counter("mlx5_0", 1, "symbol_error", 40)
    node.run("prolog", "1")
    path = node.sys.counter_path("mlx5_0", 1, "symbol_error")
    node.sys.break_file(path, how)
    got = node.run("epilog", "1")
    bad = got["mlx5_0/1"]
    assert bad.status is Status.FAIL
    assert bad.message == f"unreadable: symbol_error ({why})"
    assert bad.values["counters"]["symbol_error"] == 40  # the baseline survives
    assert got["mlx5_1/1"].status is Status.PASS
    path.rmdir() if how == "dir" else path.unlink()
    path.write_text("45\n")
    got = node.run("prolog", "2")
    assert got["mlx5_0/1"].values["rise"] == {"symbol_error": 5}


def test_no_ports_is_a_skip(tmp_path):
    node = Node(tmp_path, hcas=0)
    [skip] = node.run().values()
    assert skip.status is Status.SKIP


def test_state_unusable_still_reports_read_failures(node, tmp_path):
    node.state = tmp_path / "not-a-dir"
    node.state.write_text("x")
    node.sys.break_file(node.sys.counter_path("mlx5_0", 1, "link_downed"), "eio")
    got = node.run()
    assert got["state"].status is Status.ERROR
    assert got["mlx5_0/1"].status is Status.FAIL
    assert got["mlx5_1/1"].status is Status.PASS


def test_job_readings_are_pruned(node, monkeypatch):
    for job in range(fabric.MAX_JOB_READINGS + 5):
        node.run("prolog", str(job))
    with open_state(node.state) as store:
        blob = store.get_json("ib.counters/n1")
    assert len(blob["jobs"]) == fabric.MAX_JOB_READINGS
    assert "0" not in blob["jobs"]
    node.run("epilog", str(fabric.MAX_JOB_READINGS + 4))
    with open_state(node.state) as store:
        blob = store.get_json("ib.counters/n1")
    assert str(fabric.MAX_JOB_READINGS + 4) not in blob["jobs"]
    later = time.time() + fabric.JOB_READING_MAX_AGE_S + 10
    monkeypatch.setattr(fabric.time, "time", lambda: later)
    node.run("health", None)
    with open_state(node.state) as store:
        assert store.get_json("ib.counters/n1")["jobs"] == {}


def test_judge_port_pure():
    fail = {"link_downed": 2}
    warn = {"link_downed": 0}
    cur = {
        "link_downed": 4,
        "symbol_error": 10,
        "gone": ReadFailure("/x", errno.ENOENT, "missing"),
        "denied": ReadFailure("/y", errno.EACCES, "Permission denied"),
        "odd": "n/a",
    }
    judged = counter_probe.judge_port(
        cur, {"link_downed": 1, "symbol_error": 12, "denied": 3}, fail, warn
    )
    assert judged.status is Status.FAIL
    assert judged.flagged == [(Status.FAIL, "link_downed", 3)]
    assert judged.reset == ["symbol_error"]
    assert judged.absent == ["gone"]
    assert judged.stored == {"link_downed": 4, "symbol_error": 10, "denied": 3}
    only_access = counter_probe.judge_port({"denied": cur["denied"]}, None, fail, warn)
    assert only_access.status is Status.ERROR
    assert counter_probe.describe_age(30) == "30s"
    assert counter_probe.describe_age(3 * 3600) == "3.0h"
    assert counter_probe.describe_age(3 * 86400) == "3.0d"


def test_fake_builder_roundtrip(tmp_path):
    fake = FakeSysfs(tmp_path)
    fake.add_hca("mlx5_0", counters={"link_downed": 2}, hw_counters={"out_of_buffer": 9})
    assert fake.counter_path("mlx5_0", 1, "link_downed").read_text() == "2\n"
    assert fake.counter_path("mlx5_0", 1, "out_of_buffer", hw=True).read_text() == "9\n"


def test_concurrent_runs_on_a_fresh_state_lose_nothing(node):
    """Several prologs at once (shared node), state file created by whoever comes first."""
    import json
    import os

    pids = []
    for job in range(6):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: one prolog
            os.close(read)
            try:
                statuses = [r.status.name for r in node.run("prolog", str(100 + job)).values()]
                os.write(write, json.dumps(statuses).encode())
            finally:
                os._exit(0)
        os.close(write)
        pids.append((pid, read))
    seen = []
    for pid, read in pids:
        os.waitpid(pid, 0)
        with os.fdopen(read) as fh:
            seen.extend(json.loads(fh.read() or '["no result"]'))
    assert set(seen) == {"PASS"}, seen
    with open_state(node.state) as store:
        jobs = store.get_json("ib.counters/n1")["jobs"]
    assert sorted(jobs) == [str(100 + j) for j in range(6)]


def test_state_held_by_someone_else_is_an_error_not_a_hang(node, monkeypatch):
    import sqlite3

    node.run("prolog", "1")
    monkeypatch.setattr(fabric, "STATE_BUSY_MS", 300)
    asked = []
    real_wait = state_module.busy_wait_s
    monkeypatch.setattr(state_module, "busy_wait_s", lambda t=None: asked.append(t) or real_wait(t))
    holder = sqlite3.connect(node.state / "state.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        got = node.run("epilog", "1")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert got["state"].status is Status.ERROR
    assert "locked" in got["state"].message
    assert got["mlx5_0/1"].status is Status.PASS
    assert asked and set(asked) == {0.3}  # every lock wait bounded by the check's own limit
