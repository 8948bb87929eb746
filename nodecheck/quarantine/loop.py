"""`nodecheck validate NODELIST`: quarantine nodes, validate them as Slurm jobs, and return
or keep them out.

1. Claim (under the validate lock, quarantine/claim.py): leave alone every node another
   validate run is validating, cancel validation jobs that hold a node for nobody (held by
   Slurm after a failed launch; left by a run that died), put the rest into the maintenance
   reservation nodecheck owns (user jobs cannot land there) and submit one validation job
   per node, held. A node another run claimed in the same moment goes to the lower job id.
2. Follow each node (quarantine/follow.py decides, pure): once no job holds the node any
   more (a prolog failure slurmctld has not yet processed would otherwise drain it again as
   "Prolog error" right after the resume), resume it if nodecheck drained it, and release
   its job. A job whose prolog failed ends (--no-requeue) or, if Slurm held it anyway, is
   cancelled: the prolog's own drain stands. A job that asked for a reboot is followed by
   a new one once the node is back. Where the level runs deep.fabric, the nodes that
   passed their own jobs then run it together in one job (quarantine/fabric_stage.py).
   Each look costs one squeue for every job, and the node table at most once.
3. Leave, always, even on a timeout, an error or SIGTERM/SIGINT (`finally`): cancel this
   run's unfinished jobs; put back as found every node that was not validated (drained with
   the reason it had, or in service); take out of the reservation the nodes this run put
   there or that finished; delete the reservation once it is empty. A node that failed
   while the breaker forbids a drain, or is rebooting, stays in it: out of users' reach.
An admin's drain is never touched: such a node is skipped, and says so.
"""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path

from nodecheck import hostlist
from nodecheck.core.node import NodeInfo, drain_owner
from nodecheck.log import get_logger
from nodecheck.quarantine.claim import (
    RunId,
    ValidateBusy,
    alive_here,
    comment_for,
    sort_claims,
    validate_lock,
)
from nodecheck.quarantine.fabric_stage import (
    job_nodes,
    level_runs_fabric,
    needs_table,
    plan_fabric,
    stage_possible,
    waiting,
)
from nodecheck.quarantine.follow import Move, Next, as_found, next_step, wants_node
from nodecheck.quarantine.validation import Leave, NodeValidation, Phase
from nodecheck.run.config import Config
from nodecheck.slurm import SlurmBackend, SlurmError
from nodecheck.slurm.job_json import JobRecord
from nodecheck.slurm.jobs import SlurmJobs

JOB_NAME = "nodecheck-validate"
__all__ = ["JOB_NAME", "validate_nodes", "validation_script"]


def validation_script(config: Config) -> str:
    """The executable a validation job runs: the configured one, or the `nodecheck`
    console script of the Python running this command."""
    return config.values["validate_command"] or str(Path(sys.executable).parent / "nodecheck")


class _Run:
    """One validate run: its settings, its Slurm handles and its nodes."""

    def __init__(
        self,
        config: Config,
        config_path: str | None,
        backend: SlurmBackend,
        jobs: SlurmJobs,
        level: str,
        why: str,
    ) -> None:
        self.config, self.config_path = config, config_path
        self.backend, self.jobs = backend, jobs
        self.level, self.why = level, why
        self.reservation = str(config.values["validate_reservation"])
        self.lock = str(config.values["validate_lock_file"])
        self.me = RunId.this_process()
        self.runs: dict[str, NodeValidation] = {}
        self.log = get_logger()
        self.partners = hostlist.expand(str(config.values["validate_fabric_partners"]))
        self.partners_added: list[str] = []  # partners this run put into the reservation
        self.fabric_jobs: list[int] = []

    def _args(self, command: str, *extra: str) -> list[str]:
        args = [command, "--level", self.level, *extra]
        return ["--config", self.config_path, *args] if self.config_path else args

    def _limit_min(self) -> int:
        return max(1, int(float(self.config.values["validate_timeout_s"]) // 60))

    def submit(self, node: str) -> int:
        state = self.runs[node]
        args = self._args("validate-job", *(["--then-fabric"] if state.fabric_stage else []))
        comment = comment_for(node, self.level, self.why, self.me)
        job = self.jobs.submit(
            node, self.reservation, JOB_NAME, comment, validation_script(self.config), args,
            self._limit_min(),
        )  # fmt: skip
        state.jobs.append(job)
        return job

    def submit_fabric(self, judged: list[str], nodes: list[str]) -> int:
        """The fabric stage's one job over `nodes`, released at once (its nodes are
        settled: they just passed their own jobs), with a fresh secret for this job alone
        in sbatch's environment: the job takes it from there, never from a command line."""
        args = self._args("validate-job", "--fabric-batch", "--judge", ",".join(judged))
        names = hostlist.collect(judged)
        comment = comment_for(f"{names} (deep.fabric)", self.level, self.why, self.me)
        secret = {"NODECHECK_FABRIC_SECRET": secrets.token_hex(16)}
        job = self.jobs.submit(
            nodes, self.reservation, JOB_NAME, comment, validation_script(self.config), args,
            self._limit_min(), hold=False, env=secret,
        )  # fmt: skip
        self.fabric_jobs.append(job)
        for node in judged:
            state = self.runs[node]
            state.jobs.append(job)
            state.fabric_job, state.phase = job, Phase.FABRIC
            state.result = f"in the deep.fabric job {job} across {len(nodes)} node(s)"
        return job

    def cancel_stale(self, stale: tuple[int, ...]) -> None:
        for job in stale:
            try:
                self.jobs.cancel(job)
            except SlurmError as exc:
                self.log.warning("validation_job_not_cancelled", job=job, error=str(exc))
                continue
            self.log.warning(
                "validation_job_cancelled", job=job,
                why="held by Slurm after a failed launch, or left by a validate run that died",
            )  # fmt: skip


def validate_nodes(
    config: Config,
    config_path: str | None,
    backend: SlurmBackend,
    jobs: SlurmJobs,
    nodes: list[str],
    level: str,
    why: str,
    poll_s: float | None = None,
    timeout_s: float | None = None,
    table: list[NodeInfo] | None = None,
) -> list[NodeValidation]:
    """`table`: the node table the caller read a moment ago (read here otherwise)."""
    timeout_s = float(config.values["validate_timeout_s"]) if timeout_s is None else timeout_s
    poll_s = float(config.values["validate_poll_s"]) if poll_s is None else poll_s
    run = _Run(config, config_path, backend, jobs, level, why)
    known = {n.name: n for n in (backend.list_nodes() if table is None else table)}
    for node in nodes:
        state = run.runs[node] = NodeValidation(node, found=known.get(node))
        info = known.get(node)
        if info is None:
            state.result, state.phase = "skipped: unknown to Slurm", Phase.SKIPPED
        elif info.drained and not drain_owner(info, None).ours:
            state.result, state.phase = (
                f"skipped: {drain_owner(info, None).why} ({info.reason})",
                Phase.SKIPPED,
            )
    live = [s for s in run.runs.values() if not s.done]
    if level_runs_fabric(_level_checks(config, level), _registry()) and stage_possible(
        len(live), run.partners
    ):
        for state in live:
            state.fabric_stage = True
    ending = "timed out"
    try:
        _claim(run, [n for n, r in run.runs.items() if not r.done])
        deadline = time.monotonic() + timeout_s
        while not all(r.done for r in run.runs.values()) and time.monotonic() < deadline:
            time.sleep(poll_s)
            _look(run)
    except KeyboardInterrupt:  # SIGINT, or SIGTERM/SIGHUP made one (quarantine/command.py)
        ending = "interrupted"
    finally:
        _leave(run, ending)
    return list(run.runs.values())


def _level_checks(config: Config, level: str) -> list[str]:
    from nodecheck.quarantine.job import checks_for_level

    return list(checks_for_level(config, level))


def _registry() -> dict:
    from nodecheck.checks.registry import all_checks

    return dict(all_checks())


def _claim(run: _Run, chosen: list[str]) -> None:
    """Take the nodes no other run has: into the reservation, each with its held job."""
    if not chosen:
        return
    with validate_lock(run.lock):
        claims = sort_claims(run.jobs.jobs_named(JOB_NAME), chosen, run.me, alive_here)
        run.cancel_stale(claims.stale)
        for node, why in claims.taken.items():
            run.runs[node].result, run.runs[node].phase = f"skipped: {why}", Phase.SKIPPED
        chosen = [n for n in chosen if n not in claims.taken]
        if not chosen:
            return
        before = set(run.jobs.reservation_nodes(run.reservation))
        run.jobs.reserve(run.reservation, chosen)
        for node in chosen:  # first for all: a failed submit must not strand the others
            run.runs[node].added = node not in before
            run.runs[node].result = "waiting for Slurm to settle the node"
        for node in chosen:
            run.submit(node)
    # A run on another host may have claimed a node in the same moment: the lower job id
    # (slurmctld's own order) keeps it, and both runs read the same answer.
    mine = [r.jobs[-1] for r in run.runs.values() if r.phase is Phase.SETTLING and r.jobs]
    lost = sort_claims(run.jobs.jobs_named(JOB_NAME), chosen, run.me, alive_here, mine).taken
    for node, why in lost.items():
        state = run.runs[node]
        _cancel(run, state.jobs[-1])
        state.result, state.phase, state.added = f"skipped: {why}", Phase.SKIPPED, False


class _Pass:
    """What one look read from Slurm: at most one squeue (every job of the run), one node
    table and one reservation read, each only when a step needs it."""

    def __init__(self, run: _Run, records: dict[int, JobRecord]) -> None:
        self.run, self.records = run, records
        self._table: dict[str, NodeInfo] | None = None
        self._reserved: set[str] | None = None

    def table(self) -> dict[str, NodeInfo]:
        if self._table is None:
            self._table = {n.name: n for n in self.run.backend.list_nodes()}
        return self._table

    def reserved(self) -> set[str]:
        if self._reserved is None:
            self._reserved = set(self.run.jobs.reservation_nodes(self.run.reservation))
        return self._reserved


def _look(run: _Run) -> None:
    """gather (one squeue for every job; the node table once, only when a step needs it)
    -> decide (follow.next_step, fabric_stage.plan_fabric: pure) -> act, for each node
    still on its way."""
    try:
        looked = _Pass(run, {j.job_id: j for j in run.jobs.jobs_named(JOB_NAME)})
    except SlurmError as exc:
        run.log.warning("validation_look_failed", error=str(exc))
        return  # the controller blinked: look again next time
    for state in run.runs.values():
        if state.done:
            continue
        # Its latest job: its own, or the fabric stage's (submit_fabric appends it).
        job = looked.records.get(state.jobs[-1]) if state.jobs else None
        try:
            info = looked.table().get(state.node) if wants_node(state, job) else None
            _act(run, state, job, next_step(state, job, info), looked)
        except SlurmError as exc:
            run.log.warning("validation_step_failed", node=state.node, error=str(exc))
    try:
        _fabric_stage(run, looked)
    except (SlurmError, ValidateBusy, OSError) as exc:
        run.log.warning("fabric_stage_not_started", error=str(exc))


def _fabric_stage(run: _Run, looked: _Pass) -> None:
    """Once every node has its own verdict: one job runs deep.fabric across the waiting
    nodes (with idle partners for a lone one); partners leave the reservation after it."""
    if run.partners_added and not any(r.phase is Phase.FABRIC for r in run.runs.values()):
        _release_partners(run)
    ready = waiting(run.runs.values())
    if not ready:
        return
    table = looked.table() if needs_table(ready, run.partners) else None
    busy = set(run.runs) | (looked.reserved() if table is not None else set())
    count = int(run.config.values["validate_fabric_partner_count"])
    plan = plan_fabric(ready, run.partners, table, count, busy)
    if plan.partners:
        with validate_lock(run.lock):
            before = set(run.jobs.reservation_nodes(run.reservation))
            run.jobs.reserve(run.reservation, list(plan.partners))
        run.partners_added = [p for p in plan.partners if p not in before]
    for node in plan.judged:
        run.runs[node].fabric_note = plan.note
    run.submit_fabric(list(plan.judged), job_nodes(plan))


def _release_partners(run: _Run) -> None:
    """Partners leave the reservation as soon as the fabric job no longer needs them."""
    added, run.partners_added = run.partners_added, []
    try:
        with validate_lock(run.lock):
            kept = run.jobs.release(run.reservation, added)
    except (SlurmError, ValidateBusy, OSError) as exc:
        kept = str(exc)
    if kept:
        run.log.error("fabric_partners_not_released", nodes=added, error=kept)


def _act(run: _Run, state: NodeValidation, job: JobRecord | None, step: Next,
         looked: _Pass) -> None:  # fmt: skip
    if step.move is Move.WAIT:
        return
    if step.move is Move.START:
        if step.resume:
            _still_reserved(run, state.node, looked)
            run.backend.resume(state.node)
            state.resumed = True
        run.jobs.release_job(state.jobs[-1])
        state.phase, state.result = Phase.VALIDATING, "validating"
    elif step.move is Move.FINISH:
        if step.cancel and job is not None:
            _cancel(run, job.job_id)
        state.phase, state.result, state.leave = Phase.DONE, step.result, step.leave
    elif step.move is Move.REBOOTING:
        state.phase, state.result, state.reboots = Phase.REBOOTING, step.result, state.reboots + 1
    elif step.move is Move.RESUBMIT:
        run.submit(state.node)
        state.phase, state.result = Phase.SETTLING, step.result
    elif step.move is Move.AWAIT_FABRIC:
        state.phase, state.result = Phase.FABRIC_WAIT, step.result


def _still_reserved(run: _Run, node: str, looked: _Pass) -> None:
    """Never resume a node outside the reservation: a run on a host that does not share the
    lock may have rewritten its node list without this one (22.05 has no `Nodes+=`)."""
    if node in looked.reserved():
        return
    run.log.warning("validation_node_reserved_again", node=node, reservation=run.reservation)
    with validate_lock(run.lock):
        run.jobs.reserve(run.reservation, [node])
    looked.reserved().add(node)


def _cancel(run: _Run, job: int) -> None:
    try:
        run.jobs.cancel(job)
    except SlurmError as exc:
        run.log.warning("validation_job_not_cancelled", job=job, error=str(exc))


def _leave(run: _Run, ending: str) -> None:
    """Leave the reservation and its jobs as they were found (see the module docstring).
    Every step on its own: one that fails must not keep the others from running."""
    states = [s for s in run.runs.values() if s.phase is not Phase.SKIPPED]
    for state in states:
        if state.done:
            continue
        if state.phase is Phase.REBOOTING:
            state.leave, state.result = (
                Leave.RESERVED,
                f"{ending} while rebooting: kept in the reservation",
            )
        else:
            state.leave, state.result = Leave.AS_FOUND, f"{ending}: validation cancelled"
        state.phase = Phase.DONE
    ours = {job for s in states for job in s.jobs}
    try:
        unfinished = [
            j.job_id for j in run.jobs.jobs_named(JOB_NAME) if j.active and j.job_id in ours
        ]
    except SlurmError as exc:
        run.log.error("validation_jobs_unknown", error=str(exc))
        unfinished = sorted(ours)  # scancel of a finished job only fails
    for job in unfinished:
        _cancel(run, job)
    if unfinished:
        _wait_gone(run, set(unfinished))
    for state in states:
        if state.leave is Leave.AS_FOUND:
            _put_back(run, state)
    out = [
        s.node for s in states
        if s.leave is Leave.OUT or (s.leave is Leave.AS_FOUND and s.added)
    ] + run.partners_added  # fmt: skip
    if not out:
        return
    try:
        with validate_lock(run.lock):
            kept = run.jobs.release(run.reservation, out)
    except (SlurmError, ValidateBusy, OSError) as exc:
        kept = f"reservation {run.reservation} not changed: {exc}"
        run.log.error("reservation_not_released", nodes=out, error=str(exc))
    if kept:
        for state in states:
            if state.node in out:
                state.result += f" ({kept})"


def _wait_gone(run: _Run, jobs: set[int], most_s: float = 20.0) -> None:
    """A cancelled job ends through its epilog (COMPLETING): wait for that, so that the
    run ends with no job of its own left and the reservation is not "in use" by one."""
    deadline = time.monotonic() + most_s
    while time.monotonic() < deadline:
        try:
            if not [j for j in run.jobs.jobs_named(JOB_NAME) if j.active and j.job_id in jobs]:
                return
        except SlurmError:
            pass
        time.sleep(0.5)
    run.log.warning("validation_jobs_still_ending", jobs=sorted(jobs))


def _put_back(run: _Run, state: NodeValidation) -> None:
    """A node this run resumed goes back to how it was found: drained with the very reason
    it had (nodecheck's, exactly: still nodecheck's to return later), or down."""
    found = state.found
    if not state.result.startswith("skipped"):
        state.result += f"; {as_found(found)}"
    if not state.resumed or found is None:
        return
    try:
        if found.drained:
            run.backend.drain(state.node, found.reason)
        elif "DOWN" in found.states:
            run.jobs.set_down(state.node, found.reason or "nodecheck validate: left as found")
    except SlurmError as exc:
        # It stays in the reservation then: out of users' reach, if not as found.
        state.added, state.leave = False, Leave.RESERVED
        state.result += f" (could not be put back: {exc}; kept in the reservation)"
        run.log.error("validation_node_not_restored", node=state.node, error=str(exc))
