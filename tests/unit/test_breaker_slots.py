"""The breaker's slots (run/breaker.py choose, slurm/claims.py parse) and slurmdbd's node
events (slurm/dbd.py), from real Slurm 22.05 output (tests/fixtures/real/slurm/, each file's
header names the commands and the cluster). The real slurmctld's refusal of a taken slot is
the contract suite's (tests/contract) and the wave's (tests/integration/test_breaker_wave.py)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from nodecheck.core.node import NodeInfo
from nodecheck.run import breaker
from nodecheck.run.breaker import BreakerLimits, Held
from nodecheck.slurm import SlurmError, claims, dbd

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "slurm"
OURS = "nodecheck: gpu.ecc gpu1: 3 DBE [prolog job 1 sev=critical act=reset-gpu]"


def real(name: str) -> str:
    """A captured file without its '#' header (Slurm's output never starts with '#')."""
    lines = (REAL / name).read_text().splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("#"))


def first(options: list[str]) -> str:
    return options[0]


# ------------------------------------------------------------------------- parsing real output


def test_license_claims_name_their_holder_and_other_reservations_are_left_out():
    found = claims.parse_claims(real("scontrol-show-reservation-o-license-claims-22.05.txt"))
    assert [(c.name, c.nodes) for c in found] == [
        ("nodecheck_breaker_0", "n1"),
        ("nodecheck_breaker_p_debug_0", "n1"),
    ]  # nodecheck_validation (the quarantine loop's) is no slot
    assert found[0].end == "2026-12-06T23:32:59"


def test_node_claim_names_its_node():
    [slot] = claims.parse_claims(real("scontrol-show-reservation-o-node-claim-22.05.txt"))
    assert (slot.name, slot.nodes) == ("nodecheck_breaker_3", "n4")


def test_partition_size_and_members():
    part = claims.parse_partition(real("scontrol-show-partition-o-22.05.txt"), "debug")
    assert part == claims.PartitionInfo("debug", "n[1-2]", 2)
    with pytest.raises(SlurmError):
        claims.parse_partition(real("scontrol-show-partition-o-22.05.txt"), "gpu")


def test_claim_args_are_an_argument_list_with_checked_names():
    args = claims.claim_args("/usr/bin/scontrol", "nodecheck_breaker_3", "gpu-a01", 10)
    assert args[:3] == ["/usr/bin/scontrol", "create", "reservation"]
    assert "Licenses=nodecheck_breaker:1" in args and "Features=gpu-a01" in args
    assert "Flags=ANY_NODES" in args and "Duration=10" in args
    node_claim = claims.claim_args("scontrol", "nodecheck_breaker_3", "gpu-a01", 10, False)
    assert "Nodes=gpu-a01" in node_claim and "Flags=IGNORE_JOBS,OVERLAP" in node_claim
    for bad_name, bad_node in [("site_resv", "n1"), ("nodecheck_breaker_1 Users=x", "n1")]:
        with pytest.raises(SlurmError):
            claims.claim_args("scontrol", bad_name, bad_node, 10)
    with pytest.raises(SlurmError):
        claims.claim_args("scontrol", "nodecheck_breaker_1", "n1 Nodes=ALL", 10)
    assert claims.is_duplicate(
        "create failed (rc=1): Error creating the reservation: Duplicate reservation name"
    )
    assert claims.is_bad_license("Error creating the reservation: Invalid license specification")


def test_drain_events_with_a_bar_in_the_reason():
    events = dbd.parse_events(real("sacctmgr-show-event-drains-22.05.txt"))
    assert [(e.node, e.open) for e in events] == [
        ("n1", False),
        ("n2", True),
        ("n3", True),
        ("n4", False),
    ]
    n3 = events[2]
    # The reason is the last field: its '|' shifts nothing.
    assert n3.reason == (
        "nodecheck: host.mounts /scratch: not mounted | stale [health sev=high act=admin]"
    )
    assert (n3.state, n3.state_raw, n3.user, n3.cluster) == ("DRAIN", 514, "root(0)", "nodecheck")
    assert n3.start == datetime(2026, 12, 6, 23, 22, 52).timestamp()
    assert all(e.drain for e in events)
    assert events[0].end == datetime(2026, 12, 6, 23, 17, 18).timestamp()


def test_open_drains_only_and_cluster_events_left_out():
    events = dbd.parse_events(real("sacctmgr-show-event-open-drains-22.05.txt"))
    assert [e.node for e in events] == ["n2", "n3"]
    # The older capture (another field order) has a cluster event with no node: left out.
    assert dbd.parse_events("nodecheck||2026-12-06T23:17:10|Unknown||0|root(0)|x") == []


def test_event_args():
    args = dbd.event_args("sacctmgr", states=("DRAIN",), nodes=("n1", "n2"), start=0.0)
    assert args[:6] == ["sacctmgr", "-n", "-P", "show", "event", "Event=Node"]
    assert "States=DRAIN" in args and "Nodes=n1,n2" in args
    assert args[-1] == "format=Cluster,NodeName,Start,End,State,StateRaw,User,Reason"
    with pytest.raises(SlurmError):
        dbd.event_args("sacctmgr", nodes=("n1,n[2-9]",))
    with pytest.raises(SlurmError):
        dbd.event_args("sacctmgr", states=("DRAIN Nodes=x",))


# ------------------------------------------------------------------------------ choosing slots


def rate(k: int, node: str = "x") -> Held:
    return Held(f"nodecheck_breaker_{k}", node)


def test_rate_slots_open_when_all_are_held():
    limits = BreakerLimits(max_drains=3)
    choice = breaker.choose_rate_slot([rate(0), rate(2)], limits, pick=first)
    assert choice.slot == "nodecheck_breaker_1" and not choice.state.open
    full = breaker.choose_rate_slot([rate(0), rate(1), rate(2)], limits)
    assert full.slot is None and full.state.open
    assert full.state.why == "3 nodes drained by nodecheck in the last 10 min (limit 3)"
    # A slot another node won a moment ago (refused) is not tried again.
    again = breaker.choose_rate_slot([rate(0)], limits, frozenset({"nodecheck_breaker_1"}), first)
    assert again.slot == "nodecheck_breaker_2"
    # Share slots and other reservations are no rate slots.
    other = [Held("nodecheck_breaker_p_gpu_0", "a"), Held("nodecheck_breaker_x", "b")]
    assert (
        breaker.choose_rate_slot(other, BreakerLimits(max_drains=1)).slot == "nodecheck_breaker_0"
    )


def drained(name: str, reason: str = OURS) -> NodeInfo:
    return NodeInfo(name, ("IDLE", "DRAIN"), reason)


def test_share_count_counts_each_drain_once():
    members = frozenset(f"g{i}" for i in range(10))
    drains = [drained("g1"), drained("g2"), drained("g3", "replacing PSU"), drained("o1")]
    held = [
        rate(0, "g2"),  # its drain is in slurmdbd already: counted once
        rate(1, "g4"),  # its drain is not there yet: counted by its slot
        rate(2, "o2"),  # another partition's
        Held("nodecheck_breaker_p_gpu_0", "g1"),  # a share slot: counted as a slot
    ]
    # g1 (share slot), g2 and g4 (drains not holding a share slot); g3 is an admin's drain.
    assert breaker.share_count("gpu", members, drains, held, "g9") == (2, 1)
    assert breaker.share_count("gpu", members, drains, held, "g4") == (1, 1)  # not itself
    # An admin took g1's drain over (appended to its reason): its slot no longer counts.
    taken_over = [drained("g1", OURS + " -- RMA 44 KEEP DRAINED"), *drains[1:]]
    assert breaker.share_count("gpu", members, taken_over, held, "g9") == (2, 0)


def test_share_slot_needed_only_where_the_rate_limit_cannot_keep_the_share():
    limits = BreakerLimits(max_share=0.10, floor=3, max_drains=20)
    # 10,000 nodes: 1,000 allowed; 20 rate slots cannot get there.
    assert not breaker.needs_share_slot(limits, 10_000, (5, 0), [rate(0, "me")])
    # 8 nodes: 3 allowed; one drain now, me, and 19 free rate slots could.
    assert breaker.needs_share_slot(limits, 8, (1, 0), [rate(0, "me")])
    assert not breaker.needs_share_slot(BreakerLimits(max_share=0), 8, (7, 0), [])
    assert breaker.needs_share_slot(BreakerLimits(max_drains=0), 10_000, (0, 0), [])


def test_share_slot_races_for_the_same_name_whatever_ended_between_reads():
    limits = BreakerLimits(max_share=0.25, floor=1, max_drains=0)  # 8 nodes: 2 allowed
    first_reader = breaker.choose_share_slot(
        "gpu", 8, (0, 1), [Held("nodecheck_breaker_p_gpu_0", "a")], limits
    )
    # The slot ended between two reads; its drain is counted instead: the same name.
    late_reader = breaker.choose_share_slot("gpu", 8, (1, 0), [], limits)
    assert first_reader.slot == late_reader.slot == "nodecheck_breaker_p_gpu_1"
    full = breaker.choose_share_slot("gpu", 8, (2, 0), [], limits)
    assert full.slot is None and full.state.open
    assert full.state.why.startswith("partition gpu: 2 of 8 nodes already drained by nodecheck")
    # A name still held by a node whose drain ended is stepped over, within the limit.
    step = breaker.choose_share_slot(
        "gpu", 8, (0, 0), [Held("nodecheck_breaker_p_gpu_0", "a")], limits
    )
    assert step.slot == "nodecheck_breaker_p_gpu_1"


# ------------------------------------------------------------- one node's read (health runs)


def sinfo_block(node: str) -> str:
    """The lines of sinfo-n-node-O-22.05.txt under '# == <node>'."""
    lines = (REAL / "sinfo-n-node-O-22.05.txt").read_text().splitlines(keepends=True)
    out, inside = [], False
    for line in lines:
        if line.startswith("# == "):
            inside = line.split()[2] == node
        elif inside and not line.startswith("#"):
            out.append(line)
    return "".join(out)


def test_one_node_through_sinfo_reads_as_scontrol_shows_it():
    from nodecheck.slurm.scontrol import parse_sinfo_node, sinfo_node_args

    n1 = parse_sinfo_node(sinfo_block("n1"), "n1")
    # scontrol show node n1 at the same moment: State=IDLE+DRAIN Partitions=debug,gpu
    # Reason=<the reason> [root@2026-12-06T23:43:43]
    assert n1 is not None and n1.states == ("IDLE", "DRAIN")
    assert n1.reason == (
        "nodecheck: gpu.ecc gpu3: 2 uncorrectable ECC errors | volatile "
        "[prolog job 41 sev=critical act=replace]"
    )
    assert (n1.reason_user, n1.reason_time) == ("root", "2026-12-06T23:43:43")
    assert n1.partitions == ("debug", "gpu")  # one line per partition, "*" (default) dropped
    n2 = parse_sinfo_node(sinfo_block("n2"), "n2")
    assert n2 == NodeInfo("n2", ("IDLE",), "", "", "", ("debug",))
    assert parse_sinfo_node(sinfo_block("n9"), "n9") is None  # scontrol then says why
    args = sinfo_node_args("/usr/bin/sinfo", "n1")
    assert args[:6] == ["/usr/bin/sinfo", "-a", "-N", "-h", "-n", "n1"]


def test_a_refused_share_claim_counts_the_winner_before_choosing_again():
    """Three nodes of a 8-node partition (2 allowed) read the same empty picture; slurmctld
    gives p_0 to one. The others count again from the slots as read after the refusal: one
    gets p_1, the third finds the partition full (an overshoot here drained 3 of 8 in the
    wave test before the recount)."""
    limits = BreakerLimits(max_share=0.25, floor=1, max_drains=0)
    members = frozenset(f"n{i}" for i in range(1, 9))

    def choose(held, node, tried=frozenset()):
        counted = breaker.share_count("debug", members, [], held, node)
        return breaker.choose_share_slot("debug", 8, counted, held, limits, tried)

    assert choose([], "n1").slot == choose([], "n2").slot == "nodecheck_breaker_p_debug_0"
    won = [Held("nodecheck_breaker_p_debug_0", "n1")]
    assert choose(won, "n2", frozenset({"nodecheck_breaker_p_debug_0"})).slot == (
        "nodecheck_breaker_p_debug_1"
    )
    both = [*won, Held("nodecheck_breaker_p_debug_1", "n2")]
    full = choose(both, "n3", frozenset({"nodecheck_breaker_p_debug_0"}))
    assert full.slot is None and full.state.open
