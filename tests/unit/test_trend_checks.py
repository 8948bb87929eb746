"""Trend checks driven through the real series store (SQLite in a temp state dir), one hook
run per simulated hour, each run reading its counters through the same probes as on a node:
an NVML replay snapshot (the modelled HGX H100 of tests/fixtures/nvml with the counter of one
GPU moved), a fake sysfs with the kernel's real counter files (tests/fixtures/sysfs.py), a
saved kernel log with real Xid lines (tests/fixtures/real/kernlog, sources in SOURCES.md).

Rates used (documented figures, not tuned to pass):
- IB symbol errors at IBTA's required BER of 1e-12 on an NDR port (400 Gb/s): 400e9 bits/s
  x 1e-12 x 3600 s = 1440 symbol errors per hour: the limit of a compliant link, a FAIL.
- correctable ECC at 480/h after 120/h the day before: the issue's example reason.
- Xid 13 lines are those of leptonai/gpud pull request #46 (a real H100 dmesg).
Clocks are simulated: the trend modules' `time` is replaced, never slept on.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import NVML_FIXTURES, make_ctx, options_of

from nodecheck.checks.context import JobInfo
from nodecheck.checks.registry import all_checks, with_defaults
from nodecheck.checks.trend import fabric as trend_fabric
from nodecheck.checks.trend import gpu as trend_gpu
from nodecheck.checks.trend import xid as trend_xid
from nodecheck.core.reason import format_reason, is_nodecheck_reason, parse_reason
from nodecheck.core.results import Status
from nodecheck.run.decide import Action, decide
from nodecheck.run.report_only import ReportOnly
from nodecheck.run.report_only import report_only as apply_report_only
from nodecheck.store.state import STATE_FILE
from tests.fixtures.sysfs import healthy_node

CHECKS = all_checks()
HOUR = 3600.0
T0 = 1_780_000_000.0
BOOT_A = "6f1d6c4e-0d3a-4a0e-9d1f-3c1a2b3c4d5e"
BOOT_B = "0b7e1a22-5c4f-4d8e-a1b2-c3d4e5f60718"
REAL_XID13 = Path(__file__).resolve().parents[1] / "fixtures/real/kernlog/dmesg-ctime-xid13-109.txt"


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = T0
        for module in (trend_gpu, trend_fabric, trend_xid):
            monkeypatch.setattr(module, "time", SimpleNamespace(time=lambda: self.now))

    def hours(self, n: float) -> None:
        self.now += n * HOUR


class Node:
    """State dir, /proc (boot id) and the probes' inputs of one simulated node."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.proc = tmp / "proc"
        (self.proc / "sys/kernel/random").mkdir(parents=True)
        self.boot(BOOT_A)
        self.base = json.loads((NVML_FIXTURES / "h100-healthy.json").read_text())
        self.snaps = 0

    def boot(self, boot_id: str) -> None:
        (self.proc / "sys/kernel/random/boot_id").write_text(boot_id + "\n")

    def snapshot(self, **per_gpu: dict) -> str:
        """A replay file of the healthy H100 with fields of some GPUs changed (gpu3={...})."""
        data = json.loads(json.dumps(self.base))
        for name, fields in per_gpu.items():
            data["gpus"][int(name[3:])].update(fields)
        self.snaps += 1
        path = self.tmp / f"snap{self.snaps}.json"  # a new file: the replay cache keys on it
        path.write_text(json.dumps(data))
        return f"replay:{path}"

    def run(self, cid: str, phase: str = "health", job: JobInfo | None = None, **kw):
        nvml = kw.pop("nvml", "replay:" + str(NVML_FIXTURES / "h100-healthy.json"))
        sysfs_root = kw.pop("sysfs_root", Path("/nonexistent-sys"))
        ctx = make_ctx(
            phase=phase,
            options=options_of(CHECKS[cid], **kw),
            job=job or JobInfo(),
            procfs_root=self.proc,
            sysfs_root=sysfs_root,
            state_dir=self.state,
            nvml=nvml,
        )
        return {r.component: r for r in CHECKS[cid].func(ctx)}

    def rows(self) -> int:
        db = self.state / STATE_FILE
        if not db.exists():
            return 0
        with sqlite3.connect(db) as conn:
            have = conn.execute("SELECT name FROM sqlite_master WHERE name='series'").fetchone()
            return conn.execute("SELECT COUNT(*) FROM series").fetchone()[0] if have else 0


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


# --------------------------------------------------------------------------- gpu ECC


def ecc_run(node: Node, value: int, phase: str = "health"):
    snap = node.snapshot(gpu3={"ecc_corrected_aggregate": value})
    return node.run("trend.gpu_ecc", phase=phase, nvml=snap)["gpu3"]


def test_ecc_climbing_x4_drains_with_the_trend_reason(node, clock):
    value = 0
    for _ in range(24):  # yesterday: 120 corrected errors an hour
        ecc_run(node, value)
        value += 120
        clock.hours(1)
    for _ in range(24):  # today: 480 an hour
        got = ecc_run(node, value)
        value += 480
        clock.hours(1)
    got = ecc_run(node, value)
    assert got.status is Status.FAIL
    assert got.message == "correctable ECC 480/h, x4 in 24 h"
    # The pipeline fills in the check's declared severity and remedy (medium, validate).
    verdict = decide([with_defaults(got, CHECKS)], "health", None, "pass")
    assert verdict.action is Action.DRAIN
    assert verdict.reason == (
        "nodecheck: trend gpu.ecc gpu3: correctable ECC 480/h, x4 in 24 h"
        " [health sev=medium act=validate]"
    )
    parsed = parse_reason(verdict.reason)
    assert parsed is not None and parsed.check_id == "trend.gpu_ecc"
    assert parsed.severity == "medium" and parsed.remedy == "validate"
    assert is_nodecheck_reason(verdict.reason)


def test_ecc_one_burst_then_quiet_warns_and_never_drains(node, clock):
    value = 0
    ecc_run(node, value)
    clock.hours(1)
    value += 5000  # one burst in one hour (e.g. a row going bad, then remapped)
    statuses = []
    for _ in range(30):
        statuses.append(ecc_run(node, value).status)
        clock.hours(1)
    assert Status.FAIL not in statuses
    assert Status.WARN in statuses  # early: worth a look


def test_ecc_counter_reset_after_driver_reload_is_not_a_rise(node, clock):
    """The volatile count starts again at a driver reload (aggregate unsupported here)."""
    value = 0
    for hour in range(30):
        if hour == 10:
            node.boot(BOOT_B)  # reboot: the counter starts from what it reads now
            value = 3
        snap = node.snapshot(
            gpu3={"ecc_corrected_aggregate": None, "ecc_corrected_volatile": value}
        )
        got = node.run("trend.gpu_ecc", nvml=snap)["gpu3"]
        assert got.status is Status.PASS, got.message
        value += 1  # one an hour: under every limit
        clock.hours(1)
    assert got.values["resets"] == 1
    assert got.values["per_hour"] == pytest.approx(1.0)


def test_replaced_gpu_is_a_new_baseline_not_its_lifetime_count(node, clock):
    for _ in range(5):
        ecc_run(node, 10)
        clock.hours(1)
    snap = node.snapshot(gpu3={"ecc_corrected_aggregate": 90000, "uuid": "GPU-new-board"})
    got = node.run("trend.gpu_ecc", nvml=snap)["gpu3"]
    assert got.status is Status.PASS and got.values["resets"] == 1


def test_manual_run_judges_but_writes_nothing(node, clock):
    for _ in range(3):
        ecc_run(node, 0)
        clock.hours(1)
    before = node.rows()
    got = ecc_run(node, 0, phase="manual")
    assert got.status is Status.PASS
    assert node.rows() == before


def test_report_only_warns_instead_of_draining(node, clock):
    """`report_only = true` on a trend check: the run's report-only rule (the one every
    check goes through) turns the trend's FAIL into a counted WARN."""
    value = 0
    for _ in range(8):
        snap = node.snapshot(gpu3={"ecc_corrected_aggregate": value})
        got = node.run("trend.gpu_ecc", nvml=snap)["gpu3"]
        value += 1000
        clock.hours(1)
    assert got.status is Status.FAIL
    rules = {"trend.gpu_ecc": ReportOnly.resolve(True, CHECKS["trend.gpu_ecc"].new_signals)}
    [held] = apply_report_only([got], rules)
    assert held.status is Status.WARN and held.message.startswith("report-only: ")
    assert held.values["report_only"] is True  # counted in nodecheck_check_report_only


# --------------------------------------------------------------------------- IB


def test_ib_symbol_errors_at_the_ibta_ber_limit_fail_with_a_ber_figure(node, clock, tmp_path):
    sysfs = healthy_node(tmp_path / "sys", hcas=2)
    per_hour = round(400e9 * 1e-12 * HOUR)  # 1440
    for _ in range(7):
        got = node.run("trend.ib_counters", sysfs_root=sysfs.root)
        sysfs.bump_counter("mlx5_1", 1, "symbol_error", per_hour)
        clock.hours(1)
    got = node.run("trend.ib_counters", sysfs_root=sysfs.root)
    assert got["mlx5_0/1"].status is Status.PASS
    bad = got["mlx5_1/1"]
    assert bad.status is Status.FAIL
    assert bad.message.startswith("symbol_error 1440/h")
    assert bad.values["symbol_error"]["ber"] == pytest.approx(1e-12)
    reason = format_reason([with_defaults(bad, CHECKS)], "health", None)
    assert reason.startswith("nodecheck: trend ib.counters mlx5_1/1: symbol_error 1440/h")


def test_ib_counters_cleared_after_reboot_do_not_count(node, clock, tmp_path):
    sysfs = healthy_node(tmp_path / "sys", hcas=1)
    sysfs.set_counter("mlx5_0", 1, "symbol_error", 60000)
    for hour in range(12):
        if hour == 6:  # reboot: the HCA's counters start from zero again
            node.boot(BOOT_B)
            sysfs.set_counter("mlx5_0", 1, "symbol_error", 0)
        got = node.run("trend.ib_counters", sysfs_root=sysfs.root)["mlx5_0/1"]
        assert got.status is Status.PASS, got.message
        clock.hours(1)
    assert got.values["symbol_error"]["resets"] == 1


# --------------------------------------------------------------------------- Xid


def xid_log(node: Node, lines: list[str], now: float) -> Path:
    """The real lines appended to a saved `dmesg --ctime` log, re-stamped at the simulated
    time (a saved log's position is its stamp: the same stamp again is not a new record)."""
    stamp = time.strftime("[%a %b %d %H:%M:%S %Y]", time.gmtime(now))
    path = node.tmp / "kern.log"
    with path.open("a") as f:
        f.writelines(stamp + line[line.index("]") + 1 :] + "\n" for line in lines)
    return path


REAL_LINES = [
    line.rstrip("\n")
    for line in REAL_XID13.read_text().splitlines()
    if "Xid" in line and "): 13," in line
]


def epilog(user: str, job: str) -> JobInfo:
    return JobInfo(job_id=job, uid=5000 + len(user), user=user)


def test_one_users_xid13_storm_is_that_users_code_never_a_drain(node, clock):
    assert REAL_LINES  # the real H100 Xid 13 lines
    for job in range(20):
        path = xid_log(node, REAL_LINES, clock.now)
        got = node.run("trend.gpu_xid", phase="epilog", job=epilog("alice", str(900 + job)),
                       kmsg=str(path))  # fmt: skip
        clock.hours(2)
    got = node.run("trend.gpu_xid", phase="health", kmsg=str(path))
    (result,) = got.values()
    assert result.status is Status.PASS
    assert "all under alice's jobs: that user's code" in result.message
    assert result.values["count"] == 20 * len(REAL_LINES)


def test_same_xid_under_three_users_is_the_gpu(node, clock):
    for job, user in enumerate(("alice", "bob", "carol")):
        path = xid_log(node, REAL_LINES[:1], clock.now)
        got = node.run("trend.gpu_xid", phase="epilog", job=epilog(user, str(700 + job)),
                       kmsg=str(path))  # fmt: skip
        clock.hours(5)
    (result,) = got.values()
    assert result.status is Status.FAIL
    assert result.message.startswith("Xid 13 x3 in 168 h under 3 users' jobs")
    assert parse_reason(format_reason([result], "epilog", "702")).check_id == "trend.gpu_xid"


def test_xid_seen_by_health_has_no_user_and_counts_for_no_one(node, clock):
    for _ in range(3):
        path = xid_log(node, REAL_LINES[:1], clock.now)
        got = node.run("trend.gpu_xid", phase="health", kmsg=str(path))
        clock.hours(1)
    (result,) = got.values()
    assert result.status is Status.PASS and "no job's user known" in result.message


def test_xid_manual_run_moves_no_cursor(node, clock):
    path = xid_log(node, REAL_LINES[:1], clock.now)
    node.run("trend.gpu_xid", phase="manual", job=epilog("alice", "1"), kmsg=str(path))
    got = node.run("trend.gpu_xid", phase="epilog", job=epilog("bob", "2"), kmsg=str(path))
    (result,) = got.values()
    assert result.values["count"] == 1  # the manual run neither stored it nor moved on


# --------------------------------------------------------------------------- remap, clocks


def test_remapped_rows_growing_fail_and_spares_are_counted(node, clock):
    for rows in range(10):  # one row every 6 hours
        remap = {"corrRows": rows, "uncRows": 0, "isPending": False, "failureOccurred": False}
        got = node.run("trend.gpu_remap", nvml=node.snapshot(gpu5={"remapped_rows": remap}))
        clock.hours(6)
    got = got["gpu5"]
    assert got.status is Status.FAIL
    assert got.values["new_rows"] == 9 and got.values["spare_rows"] == 512 - 9


def test_throttle_share_from_samples(node, clock):
    slow = str(NVML_FIXTURES / "h100-hw-slowdown.json")
    healthy = str(NVML_FIXTURES / "h100-healthy.json")
    for i in range(20):
        source = slow if i % 2 else healthy  # throttled in half the samples
        got = node.run("trend.gpu_clocks", nvml=f"replay:{source}")
        clock.hours(1)
    throttled = [c for c, r in got.items() if r.status is Status.FAIL]
    assert throttled and all(got[c].values["share"] == pytest.approx(0.5) for c in throttled)
    assert any(r.status is Status.PASS for r in got.values())


# --------------------------------------------------------------------------- the reason


def test_trend_reason_round_trips_through_every_rewrite():
    from nodecheck.core.reason import flapping_prefix, flapping_reason, with_held_since

    reason = (
        "nodecheck: trend gpu.ecc gpu3: correctable ECC 480/h, x4 in 24 h"
        " [health sev=medium act=validate]"
    )
    held = with_held_since(reason, 1_780_000_000)
    assert held.endswith("[health held=1780000000 sev=medium act=validate]")
    flapping = flapping_reason(held, flapping_prefix(3, 86400))
    assert flapping.startswith("nodecheck: trend gpu.ecc gpu3: flapping (drained 3x in 24h) ")
    for text in (reason, held, flapping):
        parsed = parse_reason(text)
        assert parsed is not None and parsed.check_id == "trend.gpu_ecc", text
        assert is_nodecheck_reason(text), text
    # An admin's words after it make it the admin's; an ordinary check is untouched.
    assert not is_nodecheck_reason(reason + " -- RMA 4411")
    plain = (
        "nodecheck: gpu.ecc gpu3: 2 uncorrectable ECC errors [health sev=critical act=reset-gpu]"
    )
    assert parse_reason(plain).check_id == "gpu.ecc" and is_nodecheck_reason(plain)


def test_nvlink_replays_every_hour_fail_though_each_run_stays_under_gpu_nvlinks_limit(node, clock):
    """60 replays an hour on one link: under gpu.nvlink's 100-per-run allowance in every
    run, over the trend's 10/h WARN and, after a day at x6 the day before, a FAIL."""
    links = node.base["gpus"][1]["nvlinks"]

    def run(replays: int):
        changed = [dict(link) for link in links]
        changed[0] = {**links[0], "counters": {**links[0]["counters"], "replay": replays}}
        return node.run("trend.gpu_nvlink", nvml=node.snapshot(gpu1={"nvlinks": changed}))

    replays = 0
    for hour in range(48):
        got = run(replays)
        replays += 10 if hour < 24 else 60
        clock.hours(1)
    got = run(replays)
    assert got["gpu1"].status is Status.FAIL
    assert got["gpu1"].message == "NVLink errors 60/h, x6 in 24 h"
    assert got["gpu0"].status is Status.PASS
