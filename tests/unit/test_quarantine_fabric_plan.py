"""The fabric stage's pure parts (quarantine/fabric_stage.py, follow.py's FABRIC phases) and
validate's bounded reads (command.sacct_args): no Slurm, no clock."""

from __future__ import annotations

import pytest

from nodecheck.checks.registry import all_checks
from nodecheck.core.node import NodeInfo
from nodecheck.quarantine.claim import RunId, sort_claims
from nodecheck.quarantine.command import parse_sacct_ends, sacct_args
from nodecheck.quarantine.fabric_stage import (
    FabricPlan,
    format_verdicts,
    job_nodes,
    level_runs_fabric,
    needs_table,
    parse_task_lines,
    parse_verdicts,
    plan_fabric,
    rail_rounds,
    stage_possible,
    task_line,
    waiting,
)
from nodecheck.quarantine.follow import Move, next_step, wants_node
from nodecheck.quarantine.validation import Leave, NodeValidation, Phase
from nodecheck.slurm.job_json import JobRecord

ME = RunId("adm1", 4242, 1000)


def job(job_id: int, state: str, exit_code: int | None = 0, *, node: str = "n1",
        admin_comment: str = "", priority: int = 1, reason: str = "None") -> JobRecord:  # fmt: skip
    return JobRecord(job_id, "nodecheck-validate", state, reason, priority, 0, exit_code, node,
                     comment=f"nodecheck validate {node} level=quick: x {ME.mark}",
                     admin_comment=admin_comment)  # fmt: skip


def node(name: str, *states: str, reason: str = "") -> NodeInfo:
    return NodeInfo(name, tuple(states) or ("IDLE",), reason, partitions=("gpu",))


def at(phase: Phase, name: str = "n1", **kw) -> NodeValidation:
    return NodeValidation(name, phase=phase, jobs=[7], **kw)


# -- when the stage starts, and over which nodes -----------------------------------------


def test_the_stage_waits_until_every_node_has_its_own_verdict():
    runs = [at(Phase.FABRIC_WAIT, "n1"), at(Phase.VALIDATING, "n2"), at(Phase.DONE, "n3")]
    assert waiting(runs) == []
    for phase in (Phase.SETTLING, Phase.REBOOTING, Phase.FABRIC):
        runs[1].phase = phase
        assert waiting(runs) == [], phase  # a node back from a reboot joins the next round
    runs[1].phase = Phase.FABRIC_WAIT
    assert waiting(runs) == ["n1", "n2"]  # n3 failed its own job: not in the stage
    runs[0].phase = runs[1].phase = Phase.DONE
    assert waiting(runs) == []


def test_two_or_more_nodes_measure_among_themselves_and_take_no_partner():
    plan = plan_fabric(["n3", "n1"], ["good1"], None, 1)
    assert plan == FabricPlan(judged=("n1", "n3"))
    assert not needs_table(["n1", "n3"], ["good1"])  # no node table read for it
    assert job_nodes(plan) == ["n1", "n3"]


def test_a_lone_node_takes_an_idle_partner_never_a_busy_drained_or_reserved_one():
    table = {
        "good1": node("good1", "ALLOCATED"),  # a user's job runs there
        "good2": node("good2", "IDLE", "DRAIN", reason="admin: RMA"),
        "good3": node("good3", "IDLE", "MAINT", "RESERVED"),
        "good4": node("good4"),
        "good5": node("good5"),
    }
    partners = ["good1", "good2", "good3", "good4", "good5", "good6"]  # good6: unknown
    assert needs_table(["n1"], partners)
    plan = plan_fabric(["n1"], partners, table, 1)
    assert plan.judged == ("n1",) and plan.partners == ("good4",) and plan.note == ""
    assert job_nodes(plan) == ["good4", "n1"]
    assert plan_fabric(["n1"], partners, table, 2).partners == ("good4", "good5")
    # One already in the reservation (another run's node) or one of this run's: not a partner.
    assert plan_fabric(["n1"], partners, table, 2, busy={"good4"}).partners == ("good5",)


def test_a_lone_node_without_a_partner_still_gets_its_job_and_is_told_why():
    """Its own job left the validation's end unrecorded (the stage was to follow), so the
    fabric job runs anyway on it alone: deep.fabric SKIPs there, the job records the end."""
    alone = plan_fabric(["n1"], [], None, 1)
    assert alone.judged == ("n1",) and alone.partners == ()
    assert "no other node" in alone.note and "validate_fabric_partners" in alone.note
    busy = plan_fabric(["n1"], ["good1"], {"good1": node("good1", "MIXED")}, 1)
    assert busy.judged == ("n1",) and busy.partners == () and "idle" in busy.note
    assert not plan_fabric([], ["good1"], None, 1).start


def test_a_run_that_can_never_measure_has_no_stage():
    assert not stage_possible(1, [])
    assert stage_possible(1, ["good1"]) and stage_possible(2, [])
    assert not stage_possible(0, ["good1"])


def test_the_stage_runs_where_the_level_selects_deep_fabric():
    registry = all_checks()
    assert level_runs_fabric(["deep.*"], registry)  # the default validate_quick_checks
    assert level_runs_fabric(["host.mounts", "deep.fabric"], registry)
    assert not level_runs_fabric(["deep.gemm", "host.*"], registry)
    assert not level_runs_fabric(["no.such-check"], registry)


# -- the verdicts: task lines -> AdminComment -> each node's code -------------------------


def test_verdicts_round_trip_through_the_admin_comment():
    text = format_verdicts({"n3": 1, "n1": 0, "gpu-a07": 6})
    assert text == "nodecheck deep.fabric verdicts: gpu-a07=6 n1=0 n3=1"
    assert parse_verdicts(text) == {"n1": 0, "n3": 1, "gpu-a07": 6}
    # Not ours (a not-validated job's AdminComment), or words that are no verdict.
    assert parse_verdicts("not validated: deep.gemm node: PyTorch is not installed") == {}
    assert parse_verdicts("nodecheck deep.fabric verdicts: n1=x n2=3 ;rm=1 n4=1234") == {"n2": 3}


def test_the_batch_step_keeps_only_verdict_lines_of_its_own_judged_nodes():
    out = "\n".join([
        "n1: validation passed; none",
        task_line("n1", 0),
        task_line("n2", 1),
        task_line("good1", 0),  # a partner: never judged
        task_line("n9", 1),  # not in this job
        "nodecheck-fabric-verdict n3",  # cut short
        "nodecheck-fabric-verdict n3 one",
    ])  # fmt: skip
    assert parse_task_lines(out, ["n1", "n2", "n3"]) == {"n1": 0, "n2": 1}


# -- how a node moves through the stage (follow.next_step) --------------------------------


def test_a_pass_of_its_own_job_waits_for_the_fabric_stage():
    state = at(Phase.VALIDATING, fabric_stage=True)
    step = next_step(state, job(7, "COMPLETED", 0), node("n1"))
    assert step.move is Move.AWAIT_FABRIC
    # Without the stage, the same pass returns the node at once (as ever).
    state.fabric_stage = False
    step = next_step(state, job(7, "COMPLETED", 0), node("n1"))
    assert step.move is Move.FINISH and step.leave is Leave.OUT


def test_each_node_is_decided_by_its_own_code_in_the_fabric_job():
    comment = format_verdicts({"n1": 0, "n2": 1, "n3": 3, "n4": 6})
    ended = job(9, "FAILED", 3, node="n[1-4]", admin_comment=comment)
    drained = node("n2", "IDLE", "DRAIN", reason="nodecheck: deep.fabric n2: slow fabric")

    one = next_step(at(Phase.FABRIC, "n1"), ended, node("n1"))
    assert one.move is Move.FINISH and one.leave is Leave.OUT
    assert one.result == "passed: back in service (deep.fabric found no fault)"
    two = next_step(at(Phase.FABRIC, "n2"), ended, drained)
    assert two.move is Move.FINISH and two.leave is Leave.OUT
    assert two.result.startswith("failed: drained (nodecheck: deep.fabric n2: slow fabric")
    three = next_step(at(Phase.FABRIC, "n3"), ended, node("n3"))
    assert three.move is Move.REBOOTING  # the ladder's reboot: its own job again after it
    four = next_step(at(Phase.FABRIC, "n4"), ended, node("n4"))
    assert four.move is Move.FINISH and four.leave is Leave.AS_FOUND
    assert four.result.startswith("not validated: deep.fabric could not judge it (exit 6")


def test_a_fabric_job_without_a_verdict_proves_nothing_and_a_running_one_is_waited_for():
    running = job(9, "RUNNING", None, node="n[1-2]")
    state = at(Phase.FABRIC, "n1")
    assert not wants_node(state, running)  # no node read while it runs
    assert next_step(state, running, None).move is Move.WAIT
    ended = job(9, "TIMEOUT", 143, node="n[1-2]", admin_comment="")
    assert wants_node(state, ended)
    step = next_step(state, ended, node("n1"))
    assert step.move is Move.FINISH and step.leave is Leave.AS_FOUND
    assert "without a verdict" in step.result
    # Its prolog failed on n1: Slurm ended the job (--no-requeue), the prolog's drain stands.
    prolog = node("n1", "IDLE", "DRAIN", reason="nodecheck: host.mounts /x: not mounted")
    step = next_step(state, job(9, "CANCELLED", 0, node="n[1-2]"), prolog)
    assert step.leave is Leave.OUT and step.result.startswith("failed in the prolog")


def test_a_lone_nodes_result_says_that_deep_fabric_did_not_measure_it():
    state = at(Phase.FABRIC, fabric_note="deep.fabric not run: no other node to measure against")
    ended = job(9, "COMPLETED", 0, admin_comment=format_verdicts({"n1": 0}))
    step = next_step(state, ended, node("n1"))
    assert step.result == "passed: back in service (deep.fabric not run: no other node to " \
        "measure against)"  # fmt: skip


def test_a_running_fabric_job_claims_every_node_it_holds_for_its_run():
    """Another validate run must leave the nodes of a fabric stage alone (its job holds
    several nodes, written as a host list)."""
    other = RunId("adm2", 99, 5)
    fabric = JobRecord(12, "nodecheck-validate", "RUNNING", "None", 1, 0, None, "n[1-3]",
                       comment=f"nodecheck validate n[1-3] (deep.fabric) level=quick: x "
                               f"{other.mark}")  # fmt: skip
    claims = sort_claims([fabric], ["n2", "n5"], ME, lambda run: None)
    assert set(claims.taken) == {"n2"} and "job 12" in claims.taken["n2"]


# -- validate's sacct: bounded to what --idle needs ---------------------------------------


def test_sacct_asks_for_this_name_user_nodes_and_window_only():
    args = sacct_args("/usr/bin/sacct", ["n1", "n2"], 30, "root")
    assert args[0] == "/usr/bin/sacct"
    assert "--name=nodecheck-validate" in args and "--user=root" in args
    assert "--nodelist=n1,n2" in args
    assert args[args.index("-S") + 1] == "now-30days" and args[args.index("-E") + 1] == "now"
    assert sacct_args("/usr/bin/sacct", [], 0.5, "root")[-5] == "now-1days"


def test_sacct_ends_count_for_every_node_a_fabric_job_held():
    text = "\n".join([
        "n1|2026-12-01T10:00:00",
        "n1|2026-12-02T10:00:00",
        "n[1-3]|2026-12-03T10:00:00",  # the fabric stage's job
        "n4|Unknown",  # still running
        "n9|2026-12-03T10:00:00",  # not a candidate
    ])  # fmt: skip
    got = parse_sacct_ends(text, ["n1", "n2", "n4"])
    assert set(got) == {"n1", "n2"}
    assert got["n1"] == got["n2"]  # the fabric job's end is the later one for n1


def test_every_rail_is_a_round_of_its_own_with_its_own_secret():
    """deep.fabric is one rank per node on one device: validate_fabric_rails runs it once
    per GPU index, each round seeing that GPU alone (NCCL then takes its nearest NIC)."""
    assert rail_rounds(0, "s3cret") == [{}]  # one round, the check's own device choice
    rounds = rail_rounds(4, "s3cret")
    assert [r["CUDA_VISIBLE_DEVICES"] for r in rounds] == ["0", "1", "2", "3"]
    secrets = [r["NODECHECK_FABRIC_SECRET"] for r in rounds]
    assert len(set(secrets)) == 4 and "s3cret" not in "".join(secrets)
    assert rail_rounds(4, "s3cret") == rounds  # every node of the job derives the same
    assert rail_rounds(4, "other")[0]["NODECHECK_FABRIC_SECRET"] != secrets[0]


def test_the_new_settings_are_checked_when_the_config_is_read(tmp_path):
    from nodecheck.run.config import load_config
    from nodecheck.run.config_file import ConfigError

    def load(text: str):
        path = tmp_path / "nodecheck.toml"
        path.write_text(text)
        path.chmod(0o644)
        return load_config(str(path), {}, all_checks())

    got = load('validate_fabric_partners = "good[01-04]"\nvalidate_fabric_rails = 8\n')
    assert got.values["validate_poll_s"] == 20  # default: a look every 20 s
    assert got.values["validate_fabric_rails"] == 8
    for bad in ("validate_poll_s = 0", "validate_poll_s = 301", 'validate_fabric_partners = "g[1-"',
                "validate_fabric_partner_count = 0", "validate_fabric_rails = -1",
                "validate_idle_window_days = 0"):  # fmt: skip
        with pytest.raises(ConfigError):
            load(bad + "\n")
