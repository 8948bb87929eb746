"""The quarantine loop's pure parts: the escalation ladder, reading Slurm's job records
(real `scontrol show -o job` output), the alert body Alertmanager's API v2 takes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from nodecheck.notify.alertmanager import Alert, payload
from nodecheck.quarantine.ladder import Step, ValidationHistory, decide_after_validation
from nodecheck.run.reason import parse_reason
from nodecheck.run.results import CheckResult, Status
from nodecheck.slurm.jobs import parse_reservation_nodes, parse_show_job

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "slurm"
SLOW = CheckResult(
    "deep.gemm", Status.FAIL, "bf16 412 TFLOP/s < 0.8 x 989", "gpu3", severity="high"
)
LADDER = ("drain", "reboot", "replace")


def real(name: str) -> str:
    return "".join(x for x in (REAL / name).read_text().splitlines(True) if not x.startswith("#"))


PASSED = CheckResult("deep.gemm", Status.PASS, "bf16 951 TFLOP/s", "gpu3")


@pytest.mark.parametrize(
    ("results", "failures", "rebooted", "ladder", "step"),
    [
        ([PASSED], 0, False, LADDER, Step.RETURN),
        ([PASSED], 2, True, LADDER, Step.RETURN),  # a pass ends the episode, whatever came before
        ([SLOW], 0, False, LADDER, Step.DRAIN),  # first failure: drained for a repair
        ([SLOW], 1, False, LADDER, Step.REBOOT),  # again after the repair: reboot once
        ([SLOW], 2, True, LADDER, Step.REPLACE),  # still failing after the reboot
        ([SLOW], 9, True, LADDER, Step.REPLACE),  # the last rung repeats
        ([SLOW], 1, True, LADDER, Step.REPLACE),  # rebooted already in this episode
        ([SLOW], 5, False, ("drain",), Step.DRAIN),  # escalation off: drain every time
        ([SLOW], 1, False, (), Step.DRAIN),
        ([SLOW], 1, False, ("drain", "replace"), Step.REPLACE),
    ],
)
def test_ladder(results, failures, rebooted, ladder, step):
    got = decide_after_validation(results, ValidationHistory(failures, rebooted), ladder, "77")
    assert got.step is step
    assert got.alert == (step is Step.REPLACE)  # only the last rung needs a human now
    if step is Step.RETURN:
        assert got.reason is None
        return
    parsed = parse_reason(got.reason)
    assert parsed is not None and parsed.check_id == "deep.gemm"
    assert parsed.component == "gpu3" and parsed.phase == "validate" and parsed.job_id == "77"
    assert "412 TFLOP/s" in parsed.message  # the deep check's figure reaches the reason
    want_act = {Step.DRAIN: "", Step.REBOOT: "reboot", Step.REPLACE: "replace"}[step]
    assert parsed.remedy == want_act


def test_an_internal_error_in_validation_is_not_a_pass():
    broken = CheckResult("deep.sdc", Status.ERROR, "torch missing", "node")
    got = decide_after_validation([broken], ValidationHistory(0, False), LADDER, None)
    assert got.step is Step.DRAIN


def test_real_job_records():
    done = parse_show_job(real("scontrol-show-job-o-failed-exit3-22.05.txt"))
    assert done.finished and done.state == "FAILED" and done.exit_code == 3
    assert done.node == "n1"
    pending = parse_show_job(real("scontrol-show-job-o-pending-reserved-22.05.txt"))
    assert not pending.finished and pending.state == "PENDING"
    assert not pending.held_after_launch_failure
    assert "ReqNodeNotAvail" in pending.reason
    assert parse_reservation_nodes(real("scontrol-show-reservation-o-22.05.txt")) == ["n1"]


def test_alert_body_has_the_labels_alertmanager_groups_by():
    alert = Alert("gpu017", "deep.gemm", "high", "replace", "nodecheck: deep.gemm gpu3: ...")
    now = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)
    [firing] = payload(alert, now)
    assert firing["labels"] == {
        "alertname": "NodecheckNodeQuarantined",
        "node": "gpu017",
        "check": "deep.gemm",
        "severity": "high",
        "action": "replace",
    }
    assert firing["startsAt"] == "2026-12-01T21:00:00.000000Z" and "endsAt" not in firing
    [resolved] = payload(alert, now, resolved=True)
    assert resolved["labels"] == firing["labels"] and resolved["endsAt"] == firing["startsAt"]


def test_sacctmgr_event_lines_become_events():
    from nodecheck.quarantine.timeline import parse_sacctmgr_events

    # `sacctmgr -n -P show event format=NodeName,TimeStart,State,Reason,User`, captured from
    # Debian's slurmdbd 22.05.8 with MariaDB 10.11 on the test cluster.
    text = real("sacctmgr-show-event-22.05.txt")
    events = parse_sacctmgr_events(text, ["n1"])
    assert [e.what for e in events] == ["unk", "drain"]
    assert events[1].detail == "nodecheck: test drain [prolog job 1] (by root(0))"
    assert all(e.node == "n1" and e.source == "slurmdbd" for e in events)
    assert len(parse_sacctmgr_events(text, [])) == 3  # the cluster-wide row is dropped


def node(name, *states, parts=("gpu",), reason=""):
    from nodecheck.slurm import NodeInfo

    return NodeInfo(name, tuple(states), reason=reason, partitions=tuple(parts))


def test_idle_picks_never_validated_first_then_oldest_within_the_share():
    from nodecheck.quarantine.select import pick_idle

    nodes = [node(f"g{i:02d}", "IDLE") for i in range(1, 21)]  # 20 idle nodes
    nodes[0] = node("g01", "ALLOCATED")
    nodes[1] = node("g02", "IDLE", "DRAIN")
    last = {f"g{i:02d}": 1000.0 + i for i in range(1, 21)}
    del last["g17"]  # never validated
    last["g09"] = 10.0  # validated longest ago
    # 10% of 20 nodes = 2 at a time; one is already in the reservation.
    assert pick_idle(nodes, last, 0.10, already_reserved=["g05"]) == ["g17"]
    assert pick_idle(nodes, last, 0.10) == ["g17", "g09"]
    assert pick_idle(nodes, last, 0.04) == []  # 4% of 20 is less than one node


def test_idle_respects_every_partition_of_a_node():
    from nodecheck.quarantine.select import pick_idle

    nodes = [node("a1", "IDLE", parts=("small", "big"))] + [
        node(f"b{i}", "IDLE", parts=("big",)) for i in range(9)
    ]
    # small has one member: a 50% share of it is 0 nodes, so a1 is never taken.
    assert "a1" not in pick_idle(nodes, {}, 0.5)
    assert len(pick_idle(nodes, {}, 0.5)) == 5


def test_pending_takes_nodecheck_drains_that_may_come_back():
    from nodecheck.quarantine.select import pick_pending

    nodes = [
        node("g1", "IDLE", "DRAIN", reason="nodecheck: gpu.ecc gpu3: 2 DBE [prolog job 7]"),
        node(
            "g2",
            "IDLE",
            "DRAIN",
            reason="nodecheck: deep.gemm gpu1: slow [validate job 9 act=replace]",
        ),
        node("g3", "IDLE", "DRAIN", reason="admin: RMA 44"),
        node("g4", "IDLE"),
    ]
    assert pick_pending(nodes) == ["g1"]
