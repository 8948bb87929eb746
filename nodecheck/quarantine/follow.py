"""One node's way through a validate run, and the pure step that moves it on.

The loop (loop.py) gathers, at each look, what Slurm says about the node's current
validation job (slurm/job_json.py: its codes) and, when the step needs it, about the node;
`next_step` decides; the loop acts and records the result on the node's `NodeValidation`.

Phases: SETTLING (in the reservation, its job submitted held: waiting until no job holds
the node any more, so that a prolog failure slurmctld has not yet processed cannot drain
it again as "Prolog error" after the resume), VALIDATING (resumed if nodecheck had drained
it, its job released), REBOOTING (its job asked Slurm for a reboot: validated again once
back), DONE; SKIPPED nodes were never touched. Where the validation level runs deep.fabric
(quarantine/fabric_stage.py), a node whose own job passed waits in FABRIC_WAIT, still in the
reservation, until every node of the run has its own verdict; then one multi-node job runs
deep.fabric across the waiting nodes (FABRIC), and its verdict for each node decides that
node as its own job's exit code would have.

How a node leaves (`Leave`): OUT of the reservation as it is now (passed: in service;
failed: drained by its job or by its prolog); AS_FOUND (not validated: nodecheck could not,
or the run timed out or was stopped: put back as it was found, drained with its reason or
in service, and out of the reservation if this run put it there); RESERVED (kept in the
reservation, out of users' reach: failed while the breaker forbids a drain, or rebooting).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from nodecheck.checks.trend.class_median import why_of
from nodecheck.core.node import NodeInfo, drain_owner
from nodecheck.quarantine.job import (
    EXIT_DRAINED,
    EXIT_HELD_BACK,
    EXIT_INTERNAL,
    EXIT_NOT_VALIDATED,
    EXIT_PASSED,
    EXIT_REBOOT,
    EXIT_REPLACE,
)
from nodecheck.quarantine.validation import Leave, NodeValidation, Phase
from nodecheck.slurm.job_json import JobRecord

RESULT_FOR_EXIT = {
    EXIT_PASSED: "passed: back in service",
    EXIT_DRAINED: "failed: drained",
    EXIT_REPLACE: "failed: held for replacement",
    EXIT_HELD_BACK: "failed: not drained, the circuit breaker is open; kept in the reservation",
}
# Flags of a node that a job still holds: a prolog failure may still be on its way to
# slurmctld, and a resume now would be undone by Slurm's own "Prolog error" drain.
_BUSY = {"ALLOCATED", "MIXED", "COMPLETING"}


class Move(enum.Enum):
    WAIT = "wait"
    START = "start"  # resume if `resume`, then release the held job
    FINISH = "finish"  # done: `result`, `leave` (cancel the job first if `cancel`)
    REBOOTING = "rebooting"
    RESUBMIT = "resubmit"  # back from the reboot: a new held job
    AWAIT_FABRIC = "await fabric"  # its own job passed: on to the multi-node fabric stage


@dataclass(frozen=True)
class Next:
    move: Move
    result: str = ""
    leave: Leave = Leave.AS_FOUND
    resume: bool = False
    cancel: bool = False


def settled(info: NodeInfo) -> bool:
    """No job holds the node (not even one still in its prolog or epilog)."""
    return not _BUSY & set(info.states)


def wants_node(run: NodeValidation, job: JobRecord | None) -> bool:
    """Does the next step need the node's record? (Read only then: one small RPC.)"""
    if run.phase in (Phase.SETTLING, Phase.REBOOTING):
        return True
    if run.phase not in (Phase.VALIDATING, Phase.FABRIC) or job is None:
        return False
    return not (job.active and not job.held)


def next_step(run: NodeValidation, job: JobRecord | None, info: NodeInfo | None) -> Next:
    if run.phase is Phase.SETTLING:
        return _settling(info)
    if run.phase is Phase.REBOOTING:
        if (
            info is None
            or "DOWN" in info.states
            or any(s.startswith("REBOOT") for s in info.states)
        ):
            return Next(Move.WAIT)  # not back yet
        return Next(Move.RESUBMIT, "validating again after the reboot")
    if run.phase is Phase.VALIDATING and job is not None:
        return _validating(run, job, info)
    if run.phase is Phase.FABRIC and job is not None:
        return _fabric(run, job, info)
    return Next(Move.WAIT)


def _settling(info: NodeInfo | None) -> Next:
    if info is None or not settled(info):
        return Next(Move.WAIT)
    if info.drained and not drain_owner(info, None).ours:
        # Drained by someone else since the run chose it: theirs; never resumed here.
        why = f"skipped: drained by someone else meanwhile ({info.reason})"
        return Next(Move.FINISH, why, Leave.AS_FOUND, cancel=True)
    return Next(Move.START, resume=info.drained or "DOWN" in info.states)


def _validating(run: NodeValidation, job: JobRecord, info: NodeInfo | None) -> Next:
    if job.launch_failed:
        # Requeued and held by Slurm after its prolog failed: it will never run; the
        # prolog's own drain reason stands.
        return Next(Move.FINISH, _prolog_failed(info), Leave.OUT, cancel=True)
    if job.active:
        return Next(Move.WAIT)
    if job.state == "CANCELLED":
        if info is not None and info.drained:
            # Slurm ends a --no-requeue job whose prolog failed: CANCELLED, node drained.
            return Next(Move.FINISH, _prolog_failed(info), Leave.OUT)
        return Next(Move.FINISH, "not validated: its job was cancelled (not by this run)")
    code = job.exit_code
    if job.state == "COMPLETED" and code == EXIT_PASSED:
        if run.fabric_stage:
            return Next(Move.AWAIT_FABRIC, "passed its own job; waiting for deep.fabric")
        return Next(Move.FINISH, RESULT_FOR_EXIT[EXIT_PASSED], Leave.OUT)
    return _judged(run, job, code, info)


def _fabric(run: NodeValidation, job: JobRecord, info: NodeInfo | None) -> Next:
    """The multi-node deep.fabric job: its batch step writes each judged node's exit code
    into the job's AdminComment (root's alone to set); that code decides the node."""
    from nodecheck.quarantine.fabric_stage import parse_verdicts

    if job.launch_failed:
        return Next(Move.FINISH, _prolog_failed(info), Leave.OUT, cancel=True)
    if job.active:
        return Next(Move.WAIT)
    code = parse_verdicts(job.admin_comment).get(run.node)
    if code is None:
        if job.state == "CANCELLED" and info is not None and info.drained:
            return Next(Move.FINISH, _prolog_failed(info), Leave.OUT)
        why = f"the deep.fabric job {job.job_id} ended {job.state} without a verdict for it"
        return Next(Move.FINISH, f"not validated: {why}")
    if code == EXIT_PASSED:
        # (A WARN there, such as a partner that never joined, is no fault of this node.)
        said = run.fabric_note or "deep.fabric found no fault"
        return Next(Move.FINISH, f"{RESULT_FOR_EXIT[EXIT_PASSED]} ({said})", Leave.OUT)
    why = f"deep.fabric could not judge it (exit {code}; the node's log says why)"
    return _judged(run, job, code, info, why)


def _judged(
    run: NodeValidation, job: JobRecord, code: int | None, info: NodeInfo | None, why: str = ""
) -> Next:
    """A validation that did not pass, by its exit code (validate-job's, quarantine/job.py)."""
    if code == EXIT_REBOOT and run.reboots == 0:
        return Next(Move.REBOOTING, "rebooting")
    reason = f" ({info.reason})" if info is not None and info.reason else ""
    if code in (EXIT_DRAINED, EXIT_REPLACE):
        return Next(Move.FINISH, RESULT_FOR_EXIT[code] + reason, Leave.OUT)
    if code == EXIT_HELD_BACK:
        return Next(Move.FINISH, RESULT_FOR_EXIT[code] + reason, Leave.RESERVED)
    if code == EXIT_REBOOT:
        return Next(Move.FINISH, f"failed: reboot requested again{reason}", Leave.RESERVED)
    if code in (EXIT_NOT_VALIDATED, EXIT_INTERNAL):
        # The comment may end with the node's published figures (checks/trend/
        # class_median.py): the why is what comes before them.
        said = why or why_of(job.admin_comment)
        why = said or (
            f"nodecheck could not validate it (validate-job exit {code}; the node's log "
            "says why: validation_not_possible / validation_job_error)"
        )
        return Next(Move.FINISH, f"not validated: {why.removeprefix('not validated: ')}")
    # Ended by Slurm (TIMEOUT, NODE_FAIL, a signal...): it proved nothing either way.
    return Next(Move.FINISH, f"not validated: its job ended {job.state} (exit {code})")


def _prolog_failed(info: NodeInfo | None) -> str:
    return f"failed in the prolog: {(info.reason if info else '') or 'drained by Slurm'}"


def as_found(found: NodeInfo | None) -> str:
    """How a node left as found is, in words (for the result line)."""
    if found is None:
        return "left as found"
    if found.drained:
        return f"left as found (drained: {found.reason})"
    if "DOWN" in found.states:
        return f"left as found (down: {found.reason or 'no reason'})"
    return "left as found (in service)"
