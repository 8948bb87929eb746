"""trend.gpu_clocks from NVML's violation counters (nvmlDeviceGetViolationStatus), driven
through the real series store one simulated hour at a time, as tests/unit/test_trend_checks.py
drives the other trends (its Node and Clock: the modelled HGX H100 replayed, the module's
clock replaced).

Rates used, against the check's documented defaults (WARN 5 %, FAIL 25 % of the window):
- thermal: gpu3 held below its application clocks 30 % of every hour, i.e. violationTime
  +0.30 x 3600 s = 1.08e12 ns per hour while referenceTime (us) advances 3.6e9: over FAIL.
- power: gpu5 capped at its power limit all the time (100 %), which a busy GPU does by design:
  judged only when `policies` names power.
- a driver reload halfway: gpu3's counter restarts near 0 (a new baseline, never a rise).
"""

from __future__ import annotations

import pytest
from test_trend_checks import CHECKS, HOUR, T0, Clock, Node

from nodecheck.checks.registry import with_defaults
from nodecheck.checks.trend.gpu import violation_share
from nodecheck.core.results import Status
from nodecheck.run.decide import Action, decide
from nodecheck.store.series import Reading

NS_PER_HOUR = 3600 * 10**9
US_PER_HOUR = 3600 * 10**6
NOT_SUPPORTED = {"code": 3}


@pytest.fixture
def node(tmp_path) -> Node:
    return Node(tmp_path)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    return Clock(monkeypatch)


def violation(ref_us: int, ns: int) -> dict[str, int]:
    return {"referenceTime": ref_us, "violationTime": ns}


class Board:
    """Every GPU's two violation counters, advanced one hour at a time at a share each."""

    def __init__(self, thermal: dict[int, float], power: dict[int, float]) -> None:
        self.thermal, self.power = thermal, power
        self.ref = int(T0 * 10**6)
        self.ns = {(i, p): 0 for i in range(8) for p in ("thermal", "power")}

    def snapshot(self, node: Node, **extra: dict) -> str:
        gpus = {
            f"gpu{i}": {
                "thermal_violation": violation(self.ref, self.ns[i, "thermal"]),
                "power_violation": violation(self.ref, self.ns[i, "power"]),
                **extra.get(f"gpu{i}", {}),
            }
            for i in range(8)
        }
        return node.snapshot(**gpus)

    def hour(self) -> None:
        self.ref += US_PER_HOUR
        for (i, policy), value in self.ns.items():
            rate = (self.thermal if policy == "thermal" else self.power).get(i, 0.0)
            self.ns[i, policy] = value + round(rate * NS_PER_HOUR)


def test_thermal_share_of_time_fails_across_a_driver_reload(node, clock):
    board = Board(thermal={3: 0.30}, power={5: 1.0})
    for hour in range(24):
        if hour == 12:  # driver reloaded: every counter starts again
            board.ns = dict.fromkeys(board.ns, 0)
        got = node.run("trend.gpu_clocks", nvml=board.snapshot(node))
        board.hour()
        clock.hours(1)
    gpu3 = got["gpu3"]
    assert gpu3.status is Status.FAIL
    assert gpu3.values["source"] == "violation_counters"
    assert gpu3.values["share"] == pytest.approx(0.30)
    assert gpu3.values["resets"] == 1 and gpu3.values["hours"] == pytest.approx(22)
    assert gpu3.message == "thermal throttle in 30% of the time over 22 h (NVML violation counters)"
    verdict = decide([with_defaults(gpu3, CHECKS)], "health", None, "pass")
    assert verdict.action is Action.DRAIN
    assert verdict.reason.startswith("nodecheck: trend gpu.clocks gpu3: thermal throttle in 30%")
    # Power capping is reported, not judged by default: a busy GPU runs at its limit.
    gpu5 = got["gpu5"]
    assert gpu5.status is Status.PASS and gpu5.values["power_share"] == pytest.approx(1.0)
    assert all(got[f"gpu{i}"].status is Status.PASS for i in (0, 1, 2, 4, 6, 7))


def test_power_policy_is_judged_when_named(node, clock):
    board = Board(thermal={}, power={5: 1.0})
    for _ in range(13):
        got = node.run("trend.gpu_clocks", nvml=board.snapshot(node), policies=["power", "thermal"])
        board.hour()
        clock.hours(1)
    assert got["gpu5"].status is Status.FAIL and got["gpu5"].values["share"] == pytest.approx(1.0)
    assert got["gpu5"].message.startswith("power/thermal throttle in 100% of the time over 12 h")


def test_a_gpu_without_the_counters_falls_back_to_samples(node, clock):
    """gpu1's driver refuses the thermal policy: its clock event reasons are sampled, as
    before; the others are judged on time. Both series are stored every run."""
    board = Board(thermal={}, power={})
    refused = {"gpu1": {"thermal_violation": None, "errors": {"thermal_violation": NOT_SUPPORTED}}}
    for _ in range(12):
        got = node.run("trend.gpu_clocks", nvml=board.snapshot(node, **refused))
        board.hour()
        clock.hours(1)
    assert got["gpu1"].values["source"] == "samples"
    assert "of 12 samples" in got["gpu1"].message
    assert got["gpu0"].values["source"] == "violation_counters"
    assert all(r.status is Status.PASS for r in got.values())


def test_too_few_readings_are_not_judged(node, clock):
    board = Board(thermal={3: 1.0}, power={})
    for _ in range(3):
        got = node.run("trend.gpu_clocks", nvml=board.snapshot(node))
        board.hour()
        clock.hours(1)
    assert got["gpu3"].status is Status.PASS and got["gpu3"].values["level"] == "young"
    assert got["gpu3"].values["share"] == pytest.approx(1.0)


def test_manual_run_stores_no_reading(node, clock):
    board = Board(thermal={}, power={})
    node.run("trend.gpu_clocks", phase="manual", nvml=board.snapshot(node))
    assert node.rows() == 0
    node.run("trend.gpu_clocks", nvml=board.snapshot(node))
    assert node.rows() == 8 + 8 * 4  # a sample and two series per policy for each GPU


def series(*points: tuple[float, float, float], boot: str = "b", tag: str = "t"):
    ns = [Reading(at, value, boot, tag) for at, value, _ in points]
    ref = [Reading(at, us, boot, tag) for at, _, us in points]
    return ns, ref


def test_violation_share_counts_only_intervals_of_one_boot_and_board():
    ns, ref = series((0, 0, 0), (HOUR, 0.5 * NS_PER_HOUR, US_PER_HOUR))
    assert violation_share(ns, ref, 0).share == pytest.approx(0.5)
    # the next reading from another boot: a new baseline, its interval not counted
    ns2, ref2 = series((2 * HOUR, 10, 2 * US_PER_HOUR), boot="other")
    got = violation_share(ns + ns2, ref + ref2, 0)
    assert got.share == pytest.approx(0.5) and got.resets == 1 and got.readings == 3
    # a reference time that went back (clock stepped) is no interval either
    ns3, ref3 = series((0, 0, 5), (HOUR, 10, 4))
    assert violation_share(ns3, ref3, 0).share is None
    # two reads a moment apart may show more throttled time than elapsed: never over 1
    ns4, ref4 = series((0, 0, 0), (HOUR, 1.01 * NS_PER_HOUR, US_PER_HOUR))
    assert violation_share(ns4, ref4, 0).share == 1.0
    # readings before the window are left out
    assert violation_share(ns, ref, HOUR / 2).readings == 1


def test_no_policy_named_judges_on_samples(node, clock):
    board = Board(thermal={3: 1.0}, power={})
    got = node.run("trend.gpu_clocks", nvml=board.snapshot(node), policies=[])
    assert {r.values["source"] for r in got.values()} == {"samples"}
