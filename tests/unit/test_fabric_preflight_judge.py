"""fabric.preflight's one verdict (pure): incomplete, two nodes, the slow node, a slow path.

Figures are bytes/s as the probe measures them; the slow figures are what a `tbf` limit of
8 Mbit/s gives on the netns lab (about 1 MB/s), the healthy ones veth's ~1 GB/s.
"""

from __future__ import annotations

from nodecheck.checks.fabric.preflight_judge import judge, rate
from nodecheck.probes.fabric.preflight import PairFigure, plan_of

FAST = PairFigure(1.0e9, 1.1e9, 30.0)
SLOW = PairFigure(0.96e6, 1.0e9, 40.0)  # slow one way: the limited host's sending side
NODES4 = ["n1", "n2", "n3", "n4"]


def ring4(slow: set[tuple[int, int]]) -> dict[tuple[int, int], PairFigure]:
    return {p: SLOW if p in slow else FAST for p in [(0, 1), (2, 3), (1, 2), (0, 3)]}


def test_healthy_allocation_passes_everyone_with_one_message():
    got = judge(NODES4, set(NODES4), ring4(set()), {}, 0.5)
    assert {v.status for v in got.values()} == {"PASS"}
    assert len({v.message for v in got.values()}) == 1
    assert got["n1"].message == "4 nodes, ring pairs at 1 GB/s (median), latency 30 us"


def test_slow_node_fails_alone_naming_its_figure_and_the_median():
    pass1 = ring4({(1, 2), (2, 3)})  # n3 slow with both neighbours
    plan = plan_of({p: f.bps for p, f in pass1.items()}, 0.5, 4)
    assert plan.suspects == (2,)
    pass2 = {(0, 2): SLOW}  # again slow with n1, which pass 1 cleared
    got = judge(NODES4, set(NODES4), pass1, pass2, 0.5)
    assert got["n3"].status == "FAIL"
    assert got["n3"].message == (
        "slow fabric: 960 kB/s with n1 (cleared), allocation's healthy median 1 GB/s (below 50%)"
    )
    assert got["n3"].values["bps"] == 960000
    for node in ("n1", "n2", "n4"):
        assert got[node].status == "PASS"
        assert got[node].message.endswith("; slow node(s): n3")


def test_suspect_fast_again_with_a_cleared_partner_passes():
    pass1 = ring4({(1, 2), (2, 3)})
    got = judge(NODES4, set(NODES4), pass1, {(0, 2): FAST}, 0.5)
    assert {v.status for v in got.values()} == {"PASS"}
    assert got["n1"].values["slow_nodes"] == []


def test_slow_path_between_two_cleared_nodes_warns_both_ends():
    nodes = [f"n{i}" for i in range(1, 7)]
    pass1 = {p: FAST for p in [(0, 1), (2, 3), (4, 5), (1, 2), (3, 4), (0, 5)]}
    pass1[(1, 2)] = SLOW
    got = judge(nodes, set(nodes), pass1, {(1, 2): SLOW}, 0.5)
    assert got["n2"].status == got["n3"].status == "WARN"
    assert got["n2"].message.startswith("slow path to n3 (960 kB/s vs median 1 GB/s)")
    assert all(got[n].status == "PASS" for n in ("n1", "n4", "n5", "n6"))


def test_three_nodes_judge_against_the_fastest_pair():
    # a slow node slows two of the three pairs: the upper median would be the slow figure
    nodes = ["n1", "n2", "n3"]
    pass1 = {(0, 1): SLOW, (1, 2): SLOW, (0, 2): FAST}
    assert plan_of({p: f.bps for p, f in pass1.items()}, 0.5, 3).suspects == (1,)
    got = judge(nodes, set(nodes), pass1, {(0, 1): SLOW}, 0.5)
    assert got["n2"].status == "FAIL"
    assert "allocation's healthy pair 1 GB/s" in got["n2"].message
    assert got["n1"].status == got["n3"].status == "PASS"


def test_a_node_that_never_joined_makes_it_incomplete_for_everyone():
    got = judge(NODES4, {"n1", "n2", "n4"}, {}, {}, 0.5)
    assert set(got) == {"n1", "n2", "n4"}
    for verdict in got.values():
        assert verdict.status == "WARN"
        assert verdict.message == "preflight incomplete: n3 never joined (3 of 4 nodes)"


def test_a_pair_not_measured_is_incomplete_not_a_fail():
    pass1 = ring4({(1, 2)})
    pass1[(2, 3)] = PairFigure(error="with n4: peer went quiet")
    got = judge(NODES4, set(NODES4), pass1, {}, 0.5)
    assert {v.status for v in got.values()} == {"WARN"}
    assert got["n1"].message == (
        "preflight incomplete: pair n3-n4 not measured (with n4: peer went quiet)"
    )


def test_two_nodes_cannot_say_which_end_is_slow():
    got = judge(["a1", "a2"], {"a1", "a2"}, {(0, 1): SLOW}, {}, 0.5)
    assert {v.status for v in got.values()} == {"WARN"}
    assert got["a1"].message == (
        "slow pair (a1->a2 960 kB/s, back 1 GB/s); two nodes cannot say which end is slow"
    )
    healthy = judge(["a1", "a2"], {"a1", "a2"}, {(0, 1): FAST}, {}, 0.5)
    assert {v.status for v in healthy.values()} == {"PASS"}
    # one way at a third of the other: a loaded host's noise, not a throttled link
    noisy = judge(["a1", "a2"], {"a1", "a2"}, {(0, 1): PairFigure(0.47e9, 1.32e9, 30)}, {}, 0.5)
    assert {v.status for v in noisy.values()} == {"PASS"}
    floor = judge(["a1", "a2"], {"a1", "a2"}, {(0, 1): FAST}, {}, 0.5, min_bps=2e9)
    assert {v.status for v in floor.values()} == {"WARN"}


def test_median_below_the_floor_warns_everyone():
    got = judge(NODES4, set(NODES4), ring4(set()), {}, 0.5, min_bps=5e9)
    assert {v.status for v in got.values()} == {"WARN"}
    assert got["n1"].message.endswith("the allocation's median is below 5 GB/s")


def test_rate_units():
    assert rate(2.5e9) == "2.5 GB/s"
    assert rate(678261) == "678 kB/s"
    assert rate(12) == "12 B/s"
