"""The pairwise fabric plan and verdict, from pair figures (pure: no torch.distributed)."""

from __future__ import annotations

import pytest

from nodecheck.checks.deep.judge import judge_fabric
from nodecheck.core.results import Status
from nodecheck.probes.active import dist
from nodecheck.probes.fabric import ringplan

NODES = ["h1", "h2", "h3", "h4"]


def test_ring_rounds_cover_each_neighbour_pair_once_without_sharing_a_node():
    assert ringplan.ring_rounds(1) == []
    assert ringplan.ring_rounds(2) == [[(0, 1)]]
    assert ringplan.ring_rounds(4) == [[(0, 1), (2, 3)], [(1, 2), (0, 3)]]
    rounds = ringplan.ring_rounds(5)
    pairs = [p for r in rounds for p in r]
    assert sorted(pairs) == [(0, 1), (0, 4), (1, 2), (2, 3), (3, 4)]
    for r in rounds:
        members = [n for p in r for n in p]
        assert len(members) == len(set(members))


def test_bus_factors_are_nccl_tests_definitions():
    assert dist.bus_factor("allreduce", 8) == pytest.approx(1.75)
    assert dist.bus_factor("alltoall", 8) == pytest.approx(0.875)


def figures(pass1, pass2=None, fraction=0.5):
    plan = ringplan.classify(pass1, fraction)
    return dist.FabricFigures(len(NODES), None, pass1, pass2 or {}, plan), plan


def test_the_common_member_of_the_slow_pairs_is_the_only_suspect_and_is_confirmed():
    pass1 = {(0, 1): 9.8, (1, 2): 9.9, (2, 3): 0.012, (0, 3): 0.011}  # h4 (rank 3) slow
    _, plan = figures(pass1)
    assert plan.slow == ((0, 3), (2, 3)) and plan.suspects == (3,)
    assert plan.cleared == (0, 1, 2)
    assert ringplan.second_pass_rounds(plan) == [[(0, 3)]]
    figs, _ = figures(pass1, {(0, 3): 0.012})
    verdicts = {n: judge_fabric(n, NODES, figs, slow_fraction=0.5) for n in NODES}
    assert {n: v.status for n, v in verdicts.items()} == {
        "h1": Status.PASS, "h2": Status.PASS, "h3": Status.PASS, "h4": Status.FAIL,
    }  # fmt: skip
    assert verdicts["h4"].message.startswith("slow fabric: 0.012 GB/s at best")
    assert all(v.values["slow_nodes"] == ["h4"] for v in verdicts.values())
    assert "slow node(s): h4" in verdicts["h1"].message


def test_a_suspect_fast_with_a_cleared_partner_is_not_named():
    pass1 = {(0, 1): 9.8, (1, 2): 9.9, (2, 3): 0.01, (0, 3): 0.01}
    figs, _ = figures(pass1, {(0, 3): 9.7})  # pass 1 was noise
    verdicts = [judge_fabric(n, NODES, figs, slow_fraction=0.5) for n in NODES]
    assert {v.status for v in verdicts} == {Status.PASS}
    assert verdicts[0].values["slow_nodes"] == []


def test_a_slow_pair_of_two_healthy_nodes_warns_both_about_the_path():
    pass1 = {(0, 1): 0.02, (1, 2): 9.9, (2, 3): 9.8, (0, 3): 9.9}
    figs, plan = figures(pass1, {(0, 1): 0.02})
    assert plan.suspects == () and ringplan.second_pass_rounds(plan) == [[(0, 1)]]
    verdicts = {n: judge_fabric(n, NODES, figs, slow_fraction=0.5) for n in NODES}
    assert verdicts["h1"].status is Status.WARN and verdicts["h2"].status is Status.WARN
    assert "slow path to h2" in verdicts["h1"].message
    assert verdicts["h3"].status is Status.PASS and verdicts["h4"].status is Status.PASS


def test_a_slow_pair_that_is_fast_when_measured_again_was_noise():
    figs, _ = figures({(0, 1): 0.02, (1, 2): 9.9, (2, 3): 9.8, (0, 3): 9.9}, {(0, 1): 9.5})
    assert {judge_fabric(n, NODES, figs, slow_fraction=0.5).status for n in NODES} == {Status.PASS}


def test_noise_on_healthy_pairs_names_nobody():
    pass1 = {(0, 1): 8.1, (1, 2): 9.9, (2, 3): 7.2, (0, 3): 9.0}
    figs, plan = figures(pass1)
    assert plan.slow == ()
    assert {judge_fabric(n, NODES, figs, slow_fraction=0.5).status for n in NODES} == {Status.PASS}
