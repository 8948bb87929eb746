"""The quarantine loop's pure parts: the escalation ladder, reading Slurm's job records
(real `squeue --json` output), which run owns a node, how a node moves on, the alert body
Alertmanager's API v2 takes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from nodecheck.core.reason import parse_reason
from nodecheck.core.results import CheckResult, Status
from nodecheck.notify.alertmanager import Alert, payload
from nodecheck.quarantine.ladder import Step, ValidationHistory, decide_after_validation
from nodecheck.slurm.jobs import parse_reservation_nodes

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


def test_an_internal_error_in_validation_is_neither_a_pass_nor_a_drain():
    """nodecheck's own failure (the .deb without PyTorch) says nothing about the node: it is
    "not validated", never a rung of the ladder (issue 24: a healthy node was drained with
    "deep.gemm node: PyTorch is not installed")."""
    broken = CheckResult(
        "deep.gemm", Status.ERROR, "PyTorch is not installed: install nodecheck[active]"
    )
    skipped = CheckResult("deep.dcgm", Status.SKIP, "dcgmi not installed")
    for past in (ValidationHistory(0, False), ValidationHistory(2, True)):
        got = decide_after_validation([broken, skipped], past, LADDER, "7")
        assert got.step is Step.NOT_VALIDATED and got.reason is None and not got.alert
        assert got.summary.startswith("not validated: deep.gemm node: PyTorch is not installed")
    # A real failure beside our error still drains, with the failure alone in the reason.
    got = decide_after_validation([broken, SLOW], ValidationHistory(0, False), LADDER, "7")
    assert got.step is Step.DRAIN and "PyTorch" not in (got.reason or "")
    assert (
        decide_after_validation([PASSED, skipped], ValidationHistory(0, False), LADDER, None).step
        is Step.RETURN
    )


def test_real_job_records_are_read_by_slurms_codes():
    """`squeue --json` of Slurm 22.05.8 (tools/slurm-roots/capture-job-json.py): what the loop
    must tell apart, from codes, not from the prose `launch_failed_requeued_held`."""
    from nodecheck.slurm.job_json import parse_squeue_json

    jobs = {
        j.job_id: j
        for j in parse_squeue_json((REAL / "squeue-json-validation-jobs-22.05.json").read_text())
    }
    held, requeued, cancelled, passed, failed, killed = (jobs[i] for i in range(1, 7))
    assert held.active and held.held and not held.launch_failed  # our own hold, not Slurm's
    assert held.admin_comment == "not validated: capture's words"
    assert requeued.state == "PENDING" and requeued.reason == "JobHeldUser"
    assert requeued.launch_failed and requeued.node == "n1"
    assert cancelled.state == "CANCELLED" and not cancelled.active
    assert passed.state == "COMPLETED" and passed.exit_code == 0
    assert failed.state == "FAILED" and failed.exit_code == 3
    assert killed.state == "FAILED" and killed.exit_code == 128 + 9
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
    from nodecheck.core.node import NodeInfo

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
        # nodecheck's reason with an admin's words after it: the admin's drain now
        node(
            "g5",
            "IDLE",
            "DRAIN",
            reason="nodecheck: gpu.ecc gpu3: 2 DBE [prolog job 7] -- RMA 44 KEEP DRAINED",
        ),
        node("g6", "IDLE", "DRAIN", reason="nodecheck: gpu.ecc gpu3: 2 DBE"),  # not our form
    ]
    assert pick_pending(nodes) == ["g1"]


class _ReservationCli:
    """Stands in for ScontrolBackend: answers `show -o reservation` with a real record whose
    Nodes= is a compressed list; any other command (`show hostnames`) is a failure."""

    scontrol = "/usr/bin/scontrol"

    def __init__(self, nodes: str) -> None:
        self.record = real("scontrol-show-reservation-o-22.05.txt").replace(
            "Nodes=n1 ", f"Nodes={nodes} "
        )
        self.asked: list[list[str]] = []

    def _run(self, args: list[str]) -> str:
        self.asked.append(args)
        assert args[1:3] == ["show", "-o"], args
        return self.record


def test_reservation_nodes_are_expanded_here_not_by_scontrol():
    from nodecheck.slurm.jobs import SlurmJobs

    cli = _ReservationCli("gpu[008-010],login1")
    assert "Nodes=gpu[008-010],login1 " in cli.record
    assert SlurmJobs(cli).reservation_nodes("nodecheck") == [  # type: ignore[arg-type]
        "gpu008",
        "gpu009",
        "gpu010",
        "login1",
    ]
    assert len(cli.asked) == 1


def test_report_history_refuses_a_malformed_node_list_without_asking_slurm(tmp_path, capsys):
    from nodecheck.quarantine.command import history_command

    cfg = tmp_path / "nodecheck.toml"
    cfg.write_text('scontrol = "/nonexistent/scontrol"\n')
    assert history_command(str(cfg), "n[1-", 1.0, False) == 2
    assert "bad host list 'n[1-'" in capsys.readouterr().err
