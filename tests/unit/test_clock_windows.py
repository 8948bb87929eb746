"""Time windows that survive clock steps (issue 24, item 7), with the clock injected.

The node's clocks are read through one function, nodecheck.core.clock.now(); these tests
hand the code stamps (wall time, boot id, boot-relative time) directly, or replace now()
with a clock they drive, and step the wall clock the way NTP does while the boot clock
runs on. Slurm's clock is the controller's "now" in the SlurmView. The end-to-end cases
with the real hook and a shifted clock are in tests/faults/test_clocks.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pytest

from nodecheck.core import clock
from nodecheck.core.clock import Stamp
from nodecheck.core.node import NodeInfo
from nodecheck.core.plan import HistoryWindow, PendingFailure, Situation, SlurmView, Step
from nodecheck.core.results import CheckResult, Status
from nodecheck.run.decide import PlanSettings, decide, needs_controller_time, pending_is_live, plan
from nodecheck.run.record import StateChanges, Write
from nodecheck.store import history, recording

NOW = datetime(2026, 11, 25, 22, 0, 0).timestamp()  # the controller's clock, the true time
BOOT = "boot-a"
PASS = CheckResult("host.mem", Status.PASS, "ok")
MOUNT = CheckResult("host.mounts", Status.FAIL, "not mounted", "/scratch")
OURS = "nodecheck: host.mounts /scratch: not mounted [prolog job 7]"


def slurm_time(seconds_from_now: float) -> str:
    """A reason time as Slurm prints it (local time), on the controller's clock."""
    return datetime.fromtimestamp(NOW + seconds_from_now).isoformat(timespec="seconds")


def node_at(true_offset: float, wall_error: float, since_boot: float = 100000.0) -> Stamp:
    """The node's clocks `true_offset` seconds from NOW, its wall clock `wall_error` off."""
    return Stamp(NOW + true_offset + wall_error, BOOT, since_boot + true_offset)


# ---------------------------------------------------------------- the clock itself


def test_within_one_boot_the_boot_clock_says_how_long_ago_whatever_the_wall_clock_did():
    then = node_at(-600, 0)
    assert clock.elapsed_s(then, node_at(0, -3600)) == pytest.approx(600)  # stepped back 1 h
    assert clock.elapsed_s(then, node_at(0, +86400)) == pytest.approx(600)  # a day ahead


def test_across_a_reboot_the_moment_is_at_least_as_old_as_the_boot():
    then = node_at(-600, 0)
    now_other_boot = Stamp(NOW - 3600, "boot-b", 120.0)  # rebooted, and the RTC is an hour back
    assert clock.elapsed_s(then, now_other_boot) == pytest.approx(120.0)
    assert clock.elapsed_s(then, Stamp(NOW + 7200, "boot-b", 120.0)) == pytest.approx(7800)
    # A record from before stamps were kept: only the wall clock is known.
    assert clock.elapsed_s(Stamp(NOW - 50), Stamp(NOW)) == pytest.approx(50)


def test_now_reads_the_kernels_clocks():
    stamp = clock.now()
    assert stamp.boot_id == clock.BOOT_ID.read_text().strip()
    assert stamp.since_boot > 0 and abs(stamp.wall - datetime.now().timestamp()) < 5


# ---------------------------------------------------------------- adopting Slurm's drain


def _pending(true_offset: float, wall_error: float) -> PendingFailure:
    stamp = node_at(true_offset, wall_error)
    return PendingFailure(OURS, stamp.wall, "prolog", "7", stamp.boot_id, stamp.since_boot)


def _health(node: NodeInfo, pending: PendingFailure, now: Stamp, controller_now: float | None):
    window = HistoryWindow(pending=pending)
    view = SlurmView(node, (node,), controller_now=controller_now)
    situation = Situation("n1", "health", None, now.wall, window, view, clock=now)
    return plan(decide([PASS], "health", None, "pass"), situation, PlanSettings())


@pytest.mark.parametrize("wall_error", [+60.0, -60.0, +3600.0, -3600.0, 0.0])
def test_slurms_drain_after_our_failure_is_adopted_whatever_the_nodes_clock_says(wall_error):
    """Failure 10 min ago (node's clock off by wall_error), Slurm's drain 9 min ago by
    Slurm's own clock: adopted, the reason is ours."""
    prolog_error = NodeInfo("n1", ("IDLE", "DRAIN"), "Prolog error", "slurm", slurm_time(-540))
    got = _health(prolog_error, _pending(-600, wall_error), node_at(0, wall_error), NOW)
    assert (got.step, got.reason) == (Step.DRAIN, OURS)


def test_a_slurm_drain_older_than_our_failure_is_not_adopted():
    """By Slurm's clock the drain came before the failure: someone else's."""
    earlier = NodeInfo("n1", ("IDLE", "DRAIN"), "Prolog error", "slurm", slurm_time(-1200))
    got = _health(earlier, _pending(-600, +60), node_at(0, +60), NOW)
    assert got.step is Step.NOTHING


def test_a_failure_past_the_window_by_the_boot_clock_is_not_adopted_though_the_wall_says_recent():
    """Seven hours ago by the boot clock; the wall clock, stepped back since, says minutes."""
    old = NodeInfo("n1", ("IDLE", "DRAIN"), "Prolog error", "slurm", slurm_time(-7 * 3600 + 60))
    pending = _pending(-7 * 3600, 0)
    now = node_at(0, -7 * 3600 + 300)
    assert not pending_is_live(pending, now)
    assert _health(old, pending, now, NOW).step is Step.NOTHING


def test_the_plan_asks_for_slurms_clock_only_when_it_compares_one_of_its_times():
    prolog_error = NodeInfo("n1", ("IDLE", "DRAIN"), "Prolog error", "slurm", slurm_time(-60))
    verdict = decide([PASS], "health", None, "pass")
    window = HistoryWindow(pending=_pending(-120, 0))
    assert needs_controller_time(verdict, window, SlurmView(prolog_error), PlanSettings())
    idle = NodeInfo("n1", ("IDLE",))
    assert not needs_controller_time(verdict, HistoryWindow(), SlurmView(idle), PlanSettings())


# ---------------------------------------------------------------- the breaker's rate window


def _cluster(drained_ago: float) -> tuple[NodeInfo, ...]:
    reason = "nodecheck: gpu.ecc gpu0: 2 DBE [prolog job 1]"
    others = tuple(
        NodeInfo(f"n{i}", ("IDLE", "DRAIN"), reason, "root", slurm_time(-drained_ago), ("gpu",))
        for i in (2, 3)
    )
    return (NodeInfo("n1", ("IDLE",), partitions=("gpu",)), *others)


@pytest.mark.parametrize("wall_error", [0.0, +3600.0, -3600.0])
def test_the_rate_window_counts_on_slurms_clock(wall_error):
    """Two drains 2 min ago by Slurm's clock, limit 2 in 10 min: the third is held back,
    however far the node's own clock has jumped."""
    settings = PlanSettings(breaker_max_share=0, breaker_max_drains=2, breaker_window_min=10)
    nodes = _cluster(drained_ago=120)
    view = SlurmView(nodes[0], nodes, controller_now=NOW)
    now = node_at(0, wall_error)
    situation = Situation("n1", "prolog", "7", now.wall, HistoryWindow(), view, clock=now)
    got = plan(decide([MOUNT], "prolog", "7", "pass"), situation, settings)
    assert got.step is Step.BREAKER_HELD, got
    assert "2 nodes drained by nodecheck in the last 10 min" in got.why


def test_drains_outside_the_window_by_slurms_clock_do_not_count():
    settings = PlanSettings(breaker_max_share=0, breaker_max_drains=2, breaker_window_min=10)
    nodes = _cluster(drained_ago=3600)
    view = SlurmView(nodes[0], nodes, controller_now=NOW)
    now = node_at(0, -3600)  # the node's clock, an hour behind, would put them in the window
    situation = Situation("n1", "prolog", "7", now.wall, HistoryWindow(), view, clock=now)
    assert plan(decide([MOUNT], "prolog", "7", "pass"), situation, settings).step is Step.DRAIN


# ---------------------------------------------------------------- passes towards a resume


@dataclass
class DrivenClock:
    """A clock the test moves: the wall clock may step, the boot clock only runs on."""

    wall: float
    since_boot: float = 1000.0

    def tick(self, seconds: float) -> None:
        self.wall += seconds
        self.since_boot += seconds

    def now(self) -> Stamp:
        return Stamp(self.wall, BOOT, self.since_boot)


def test_passes_recorded_after_the_clock_stepped_back_count(tmp_path, monkeypatch):
    driven = DrivenClock(NOW)
    monkeypatch.setattr(clock, "now", driven.now)
    marker = {"reason": OURS, "at": clock.now().wall, "flapping": False, "checks": ["host.mounts"]}
    cfg = _Config(tmp_path)

    def run(status: str, changes: StateChanges | None = None) -> None:
        rec = history.RunRecord(clock.now().wall, "health", None, status, "none", 0.1, ())
        recording.record_run(cfg, "n1", rec, changes)

    run("FAIL", StateChanges((Write(key=history.DRAIN_MARKER, value=marker),)))
    driven.tick(60)
    driven.wall -= 3600  # NTP steps the clock back an hour
    run("PASS")
    driven.tick(60)
    run("PASS")
    window = history.with_history(tmp_path, lambda h: history.window(h, clock.now().wall, 86400))
    assert window.marker is not None and window.marker.after_run == 0
    assert window.passes_since_drain == 2
    # Counted by time, as before, neither pass would (they are "older" than the drain).
    by_time = history.with_history(tmp_path, lambda h: h.health_passes_since(marker["at"]))
    assert by_time == 0


def test_drains_in_the_flap_window_are_counted_on_the_boot_clock(tmp_path, monkeypatch):
    """Two drains ten minutes apart, then NTP steps the clock two days forward: both are
    still within a 24 h flap window; a reboot later, only the wall clock is left."""
    driven = DrivenClock(NOW)
    monkeypatch.setattr(clock, "now", driven.now)
    cfg = _Config(tmp_path)

    def drain() -> None:
        stamp = clock.now()
        changes = StateChanges((Write(event="drain", text=OURS, at=stamp.wall, stamp=stamp),))
        rec = history.RunRecord(stamp.wall, "prolog", "7", "FAIL", "drained", 0.1, ())
        recording.record_run(cfg, "n1", rec, changes)

    def drains(now: Stamp) -> int:
        return history.with_history(
            tmp_path, lambda h: history.window(h, now, 86400)
        ).drains_in_window

    drain()
    driven.tick(600)
    drain()
    driven.tick(600)
    driven.wall += 2 * 86400
    assert drains(clock.now()) == 2
    wall_only = history.with_history(
        tmp_path, lambda h: h.events_since("drain", clock.now().wall - 86400)
    )
    assert wall_only == 0  # what the wall clock alone counted
    # After a reboot an hour later (a wall clock now right again): the drains are at least
    # as old as the new boot, and the wall clock says when.
    assert drains(Stamp(NOW + 4800, "boot-b", 60.0)) == 2
    assert drains(Stamp(NOW + 2 * 86400, "boot-b", 60.0)) == 0


class _Config:
    """What recording.record_run reads of a config."""

    def __init__(self, state_dir):
        self.values = {}
        self._state_dir = state_dir

    def state_dir_for(self, node):
        return self._state_dir

    def metrics_file_for(self, node):
        return None


def test_slurmctlds_clock_is_read_from_its_own_replies():
    """`scontrol show config` of Slurm 22.05.8 (first line as the test cluster printed it),
    and the JSON node reply of 26.05 (tests/fixtures/real): both slurmctld's time."""
    from pathlib import Path

    from nodecheck.slurm.scontrol import json_controller_time, parse_config_time

    text = "Configuration data as of 2026-12-06T20:34:17\nAccountingStorageBackupHost = (null)\n"
    assert parse_config_time(text) == datetime(2026, 12, 6, 20, 34, 17).timestamp()
    real = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "slurm" / "26.05"
    reply = (real / "scontrol-json-show-node-unknown.json").read_text()
    assert json_controller_time(reply) == 1796156048


def test_unsaved_writes_are_owed_only_to_the_state_directory_they_were_meant_for(tmp_path):
    """Two configs (or test clusters) on one host name the same node: the default fallback
    directory is shared, so writes kept for one state directory must never be applied to
    the other (measured: a hung-mount test's drain marker resumed another test's node)."""
    from nodecheck.store import unsaved

    fallback = tmp_path / "unsaved"
    write = {"kind": "drain", "reason": "nodecheck: host.mounts /x: not mounted [prolog]"}
    unsaved.keep(fallback, "n1", tmp_path / "a", (write,), "read-only", 1.0, None)
    assert unsaved.load(fallback, "n1", tmp_path / "a").writes == (write,)
    assert unsaved.load(fallback, "n1", tmp_path / "b") is None
    assert unsaved.load(fallback, "n1") is not None  # `report` lists every kept file
