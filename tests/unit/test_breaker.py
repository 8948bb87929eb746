from datetime import datetime

from nodecheck.core.node import NodeInfo
from nodecheck.run.breaker import BreakerLimits, evaluate, partition_status
from nodecheck.slurm import reason_epoch

NOW = datetime(2026, 11, 25, 22, 0, 0).timestamp()


def node(name, parts=("gpu",), reason="", minutes_ago=60.0):
    when = datetime.fromtimestamp(NOW - minutes_ago * 60).isoformat(timespec="seconds")
    states = ("IDLE", "DRAIN") if reason else ("IDLE",)
    return NodeInfo(
        name, states, reason, "root" if reason else "", when if reason else "", tuple(parts)
    )


OURS = "nodecheck: gpu.ecc gpu1: 3 DBE [prolog job 1 sev=critical act=reset-gpu]"


def cluster(total, drained, parts=("gpu",), minutes_ago=60.0, admin=0):
    nodes = [node(f"n{i}", parts, OURS, minutes_ago) for i in range(drained)]
    nodes += [node(f"a{i}", parts, "replacing PSU") for i in range(admin)]
    nodes += [node(f"h{i}", parts) for i in range(total - drained - admin)]
    return nodes


def test_share_limit_opens_at_the_threshold():
    limits = BreakerLimits(max_share=0.10, floor=3, max_drains=0)
    assert not evaluate(cluster(100, 9), "h0", limits, NOW).open  # would be the 10th
    state = evaluate(cluster(100, 10), "h0", limits, NOW)
    assert state.open and state.partition == "gpu" and (state.drained, state.total) == (10, 100)
    assert "10 of 100 nodes already drained by nodecheck" in state.why


def test_floor_lets_small_partitions_drain_a_few_nodes():
    limits = BreakerLimits(max_share=0.10, floor=3, max_drains=0)
    assert not evaluate(cluster(8, 2), "h0", limits, NOW).open
    assert evaluate(cluster(8, 3), "h0", limits, NOW).open


def test_admin_drains_do_not_count_and_nor_does_the_node_itself():
    limits = BreakerLimits(max_share=0.10, floor=3, max_drains=0)
    assert not evaluate(cluster(10, 2, admin=5), "h0", limits, NOW).open
    # re-draining a node that is already ours does not count it twice
    assert not evaluate(cluster(10, 3), "n0", limits, NOW).open


def test_only_the_nodes_partitions_matter():
    limits = BreakerLimits(max_share=0.10, floor=1, max_drains=0)
    nodes = [*cluster(20, 5, parts=("a",)), node("b1", ("b",)), node("b2", ("b",))]
    assert not evaluate(nodes, "b1", limits, NOW).open
    assert evaluate(nodes, "h0", limits, NOW).open


def test_rate_limit_counts_recent_drains_only():
    limits = BreakerLimits(max_share=0, max_drains=5, window_min=10)
    assert not evaluate(cluster(100, 20, minutes_ago=30), "h0", limits, NOW).open
    state = evaluate(cluster(100, 5, minutes_ago=2), "h0", limits, NOW)
    assert state.open and state.recent == 5 and "in the last 10 min" in state.why


def test_disabled_breaker_never_opens():
    assert not evaluate(cluster(10, 9), "h0", BreakerLimits(0, 0, 0), NOW).open


def test_reason_times_from_scontrol_and_pyslurm():
    assert reason_epoch("1764108000") == 1764108000.0
    assert reason_epoch(datetime.fromtimestamp(NOW).isoformat()) == NOW
    assert reason_epoch("Unknown") is None and reason_epoch("") is None


def test_partition_status_for_the_report():
    [gpu] = partition_status(cluster(20, 3), BreakerLimits(0.10, 2, 0))
    assert gpu.open and (gpu.drained, gpu.total) == (3, 20)


def test_a_simultaneous_wave_agrees_on_who_keeps_the_drain():
    from nodecheck.run.breaker import backs_off

    limits = BreakerLimits(max_share=0.25, floor=2, max_drains=0)
    # 8 nodes, 5 drained by nodecheck within the same two seconds (a wave).
    nodes = [node(f"n{i}", reason=OURS, minutes_ago=(10 - i) / 60) for i in range(5)]
    nodes += [node(f"h{i}") for i in range(3)]
    kept = [n.name for n in nodes[:5] if not backs_off(nodes, n.name, limits, NOW).open]
    assert kept == ["n0", "n1"]  # the two earliest; the rest back off
    state = backs_off(nodes, "n4", limits, NOW)
    assert state.open and "5 of 8 nodes drained by nodecheck at once" in state.why
    assert not backs_off(nodes, "h0", limits, NOW).open  # not ours: nothing to back off


def test_wave_rate_limit():
    from nodecheck.run.breaker import backs_off

    limits = BreakerLimits(max_share=0, max_drains=3, window_min=10)
    nodes = [node(f"n{i}", reason=OURS, minutes_ago=(10 - i) / 60) for i in range(5)]
    assert [n.name for n in nodes if backs_off(nodes, n.name, limits, NOW).open] == ["n3", "n4"]
