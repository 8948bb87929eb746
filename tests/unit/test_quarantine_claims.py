"""Drain ownership (core/node.py), which validate run owns a node (quarantine/claim.py)
and how a node moves through a validate run (quarantine/follow.py): all pure, table-tested.
The real-cluster counterparts are in tests/integration/test_quarantine_faults.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodecheck.core.node import NodeInfo, drain_owner
from nodecheck.core.reason import is_nodecheck_reason
from nodecheck.quarantine.claim import RunId, comment_for, run_of, sort_claims
from nodecheck.quarantine.follow import Move, next_step
from nodecheck.quarantine.validation import Leave, NodeValidation, Phase
from nodecheck.slurm.job_json import JobRecord, parse_squeue_json

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "slurm"
OURS = "nodecheck: host.mounts /scratch: not mounted [prolog job 3 sev=critical act=admin]"
ME = RunId("adm1", 100, 5000)


def drained(reason: str, *states: str) -> NodeInfo:
    return NodeInfo("n1", states or ("IDLE", "DRAIN"), reason=reason)


@pytest.mark.parametrize(
    ("reason", "kept", "ours"),
    [
        (OURS, OURS, True),  # exactly what the state keeps
        (OURS, None, True),  # no state: whole nodecheck grammar
        (f"{OURS} -- RMA 44 KEEP DRAINED", OURS, False),  # the admin appended
        (f"{OURS} -- RMA 44 KEEP DRAINED", None, False),
        (OURS.replace("not mounted", "not mounted RMA 44"), OURS, False),  # edited inside
        ("nodecheck: host.mounts /scratch: not mounted", None, False),  # no context: typed
        ("nodecheck: x.y z: a [prolog] [admin: keep]", None, False),
        ("admin: PSU swap", None, False),
        ("Prolog error", None, False),  # Slurm's: adopted by decide.py, never owned here
    ],
)
def test_one_ownership_rule(reason, kept, ours):
    assert drain_owner(drained(reason), kept).ours is ours


def test_ownership_of_a_node_not_drained_and_the_words_said():
    assert not drain_owner(NodeInfo("n1", ("IDLE",), reason=OURS), OURS).ours
    why = drain_owner(drained(f"{OURS} -- RMA 44"), None).why
    assert "not exactly one nodecheck writes" in why
    assert NodeInfo("n1", ("IDLE", "DRAIN"), reason=OURS).drained_by_nodecheck


def test_the_grammar_takes_every_reason_nodecheck_writes():
    from nodecheck.core.reason import flapping_prefix, flapping_reason, with_held_since

    for reason in (
        OURS,
        flapping_reason(OURS, flapping_prefix(4, 86400)),
        with_held_since(OURS, 1796000000),
        "nodecheck: validate.new node: never validated: waits for nodecheck validate "
        "--pending [health act=validate]",
        "nodecheck: gpu.ecc gpu3: 2 uncorrectable ECC errors (volatile DBE) (+2 more) "
        "[epilog job 7 sev=critical act=reset-gpu]",
    ):
        assert is_nodecheck_reason(reason), reason


def job(job_id, node="n1", state="RUNNING", run=ME, **kw) -> JobRecord:
    comment = comment_for(node, "quick", "why", run) if run else "nodecheck validate n1"
    return JobRecord(
        job_id=job_id,
        name="nodecheck-validate",
        state=state,
        reason=kw.pop("reason", "None"),
        priority=kw.pop("priority", 100),
        restarts=kw.pop("restarts", 0),
        exit_code=kw.pop("exit_code", None),
        node=node,
        comment=comment,
        admin_comment=kw.pop("admin_comment", ""),
    )


OTHER = RunId("adm2", 200, 7000)
DEAD = RunId("adm1", 300, 9000)


def alive(run: RunId) -> bool | None:
    return None if run.host != "adm1" else run != DEAD


def test_a_run_leaves_another_runs_nodes_and_cancels_what_holds_a_node_for_nobody():
    jobs = [
        job(5, "n1", run=OTHER),  # another host's run validates n1
        job(6, "n2", "PENDING", priority=0, restarts=1, reason="JobHeldUser"),  # launch failed
        job(7, "n3", run=DEAD),  # a run of this host that died
        job(8, "n4", "COMPLETED", exit_code=0, run=OTHER),  # finished: holds nothing
        job(9, "n5", run=None),  # an older nodecheck's, unmarked: left alone
    ]
    claims = sort_claims(jobs, ["n1", "n2", "n3", "n4", "n5"], ME, alive)
    assert sorted(claims.taken) == ["n1", "n5"]
    assert "run adm2:200, job 5" in claims.taken["n1"]
    assert claims.stale == (6, 7)


def test_two_runs_claiming_a_node_at_once_agree_the_lower_job_id_keeps_it():
    both = [job(11, run=OTHER, state="PENDING", priority=0), job(12, state="PENDING", priority=0)]
    assert sort_claims(both, ["n1"], ME, alive, mine=[12]).taken  # we lost
    assert not sort_claims(both, ["n1"], OTHER, alive, mine=[11]).taken  # they won


def test_the_run_mark_survives_a_long_why():
    comment = comment_for("n1", "quick", "x" * 400, ME)
    assert len(comment) <= 250 and run_of(job(1, run=ME)) == ME
    assert comment.endswith(ME.mark)


def real_jobs() -> dict[int, JobRecord]:
    text = (REAL / "squeue-json-validation-jobs-22.05.json").read_text()
    return {j.job_id: j for j in parse_squeue_json(text)}


def state(phase=Phase.VALIDATING, **kw) -> NodeValidation:
    return NodeValidation("n1", jobs=[1], phase=phase, **kw)


def test_settling_waits_until_no_job_holds_the_node():
    """Right after a prolog drain the node is still ALLOCATED+DRAIN: a resume now would be
    undone by Slurm's "Prolog error" drain once slurmctld processes the failure."""
    assert (
        next_step(state(Phase.SETTLING), None, drained(OURS, "ALLOCATED", "DRAIN")).move
        is Move.WAIT
    )
    assert next_step(state(Phase.SETTLING), None, drained(OURS, "MIXED", "DRAIN")).move is Move.WAIT
    go = next_step(state(Phase.SETTLING), None, drained(OURS))
    assert go.move is Move.START and go.resume
    fresh = next_step(state(Phase.SETTLING), None, NodeInfo("n1", ("IDLE", "RESERVED")))
    assert fresh.move is Move.START and not fresh.resume
    theirs = next_step(state(Phase.SETTLING), None, drained("admin: RMA 44"))
    assert theirs.move is Move.FINISH and theirs.cancel and "someone else" in theirs.result


@pytest.mark.parametrize(
    ("job_id", "node", "move", "leave", "words"),
    [
        (2, drained("Prolog error"), Move.FINISH, Leave.OUT, "failed in the prolog: Prolog error"),
        (3, drained(OURS), Move.FINISH, Leave.OUT, f"failed in the prolog: {OURS}"),
        (3, NodeInfo("n1", ("IDLE",)), Move.FINISH, Leave.AS_FOUND, "cancelled (not by this"),
        (4, None, Move.FINISH, Leave.OUT, "passed: back in service"),
        (5, None, Move.REBOOTING, Leave.AS_FOUND, "rebooting"),
        (6, None, Move.FINISH, Leave.AS_FOUND, "not validated: its job ended FAILED (exit 137)"),
    ],
)
def test_following_a_validation_job_by_its_real_record(job_id, node, move, leave, words):
    got = next_step(state(), real_jobs()[job_id], node)
    assert got.move is move and words in got.result
    if move is Move.FINISH:
        assert got.leave is leave
    assert got.cancel is (job_id == 2)  # the held job is cancelled: it never runs by itself


def test_our_own_hold_is_not_a_launch_failure():
    assert next_step(state(), real_jobs()[1], None).move is Move.WAIT


def test_a_job_that_could_not_validate_says_why_and_leaves_the_node_as_found():
    said = "not validated: deep.gemm node: PyTorch is not installed; install nodecheck[active]"
    done = job(4, state="FAILED", exit_code=6, admin_comment=said)
    got = next_step(state(), done, NodeInfo("n1", ("IDLE", "RESERVED")))
    assert got.leave is Leave.AS_FOUND and got.result == said
    unsaid = next_step(state(), job(4, state="FAILED", exit_code=2), None)
    assert unsaid.result.startswith("not validated: nodecheck could not validate it")


def test_held_back_by_the_breaker_stays_in_the_reservation():
    got = next_step(state(), job(4, state="FAILED", exit_code=5), drained(OURS))
    assert got.leave is Leave.RESERVED and "circuit breaker" in got.result
