"""One nodecheck run, start to end, one way: gather -> decide -> act -> record.

Gather runs the checks (and, only when the verdict needs them, reads the node's history
window and its controller state: run/gather.py); decide is pure (run/decide.py: results ->
verdict, then verdict + situation -> plan); act carries out the plan's drain or resume
(run/act.py); record writes the history, the drain marker and the metrics (run/record.py).

The CLI's `run` (manual) and `hook` (prolog/epilog/health) both come through `execute`,
so what an admin sees by hand is what the prolog decided.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from nodecheck.checks.context import CheckContext, JobInfo
from nodecheck.checks.registry import (
    TIERS,
    Check,
    all_checks,
    in_tier,
    match_ids,
    run_budget_s,
    with_defaults,
)
from nodecheck.core import clock
from nodecheck.core.plan import Step
from nodecheck.core.results import CheckResult, Status
from nodecheck.hostlist import is_plain_node_name
from nodecheck.log import bind_run, get_logger
from nodecheck.run import keeper
from nodecheck.run.config import Config, NodeConfig, load_config, salvage_config
from nodecheck.run.config_file import ConfigError, ConfigRead
from nodecheck.run.decide import (
    Action,
    PlanSettings,
    Verdict,
    after_wave,
    breaker_limits,
    decide,
    internal_error_verdict,
    needs_history,
    plan,
)
from nodecheck.run.report_only import ReportOnly, report_only
from nodecheck.run.runner import Planned, run_checks

# history (and with it sqlite3 and nodecheck.store.state) is loaded before the probes fork: the
# parent records every hook run, and the probe children that keep state share the import.
from nodecheck.store import history, state

STATE_CHECK_ID = "nodecheck.state"

if TYPE_CHECKING:  # the healthy path never imports nodecheck.slurm
    from nodecheck.slurm import SlurmBackend

DEFAULT_KILLSWITCH = Path("/etc/nodecheck/disabled")


@dataclass(frozen=True)
class RunRequest:
    """What to run: the phase, its environment, and whether to act on the verdict."""

    phase: str
    env: Mapping[str, str]
    config_path: str | None = None
    node: str | None = None
    check_patterns: tuple[str, ...] = ()
    act: bool = False  # hooks talk to Slurm when the verdict needs it; manual runs never do
    dry_run: bool = False
    hook_pid: int | None = None  # the process Slurm started, if not this one (the agent's)
    tier: str | None = None  # only checks of this tier (registry.TIERS); None: phases decide
    config_read: ConfigRead | None = None  # the config file as the hook's first look read it
    config: Config | None = None  # that file, validated already (None: validate it here)
    started: float | None = None  # time.monotonic() at the hook's start: the budget's start


@dataclass(frozen=True)
class RunOutcome:
    """What a run found and did: results, verdict, Slurm action, duration."""

    node: str
    phase: str
    node_class: str
    job: JobInfo
    results: list[CheckResult]
    verdict: Verdict
    action_taken: str
    duration_s: float
    notes: tuple[str, ...] = field(default_factory=tuple)


class UsageError(Exception):
    """The operator asked for something that does not exist (e.g. an unknown check id)."""


def node_name(explicit: str | None, env: Mapping[str, str]) -> str:
    name = explicit or env.get("SLURMD_NODENAME") or os.uname().nodename.split(".")[0]
    if not is_plain_node_name(name):
        raise UsageError(f"refusing node name {name!r}: not a plain host name")
    return name


def select_checks(
    registry: Mapping[str, Check],
    nodecfg: NodeConfig,
    phase: str,
    patterns: tuple[str, ...],
    tier: str | None = None,
) -> list[Check]:
    try:
        registry = in_tier(registry, tier)
    except KeyError:
        raise UsageError(f"unknown tier {tier!r} (one of {', '.join(TIERS)})") from None
    if patterns:
        try:
            ids = match_ids(patterns, registry)
        except KeyError as exc:
            where = f" in tier {tier}" if tier else ""
            raise UsageError(
                f"no check matches {exc.args[0]!r}{where} (see `nodecheck list`)"
            ) from None
        return [registry[cid] for cid in ids]
    return [
        chk
        for cid, chk in registry.items()
        if nodecfg.checks[cid].enabled and phase in nodecfg.checks[cid].phases
    ]


def _killswitch_on(config: Config | None, nodecfg: NodeConfig | None) -> str | None:
    if nodecfg is not None and nodecfg.disabled:
        return "disabled = true in config"
    switch = Path(config.killswitch_file) if config else DEFAULT_KILLSWITCH
    if switch.exists():
        return f"killswitch file {switch} present"
    return None


def execute(req: RunRequest) -> RunOutcome:
    started = time.monotonic() if req.started is None else req.started
    log = get_logger()
    job = JobInfo.from_env(req.env)
    node = node_name(req.node, req.env)
    bind_run(node=node, phase=req.phase, job=job.job_id)
    if job.ignored:
        log.warning("env_ignored", variables=list(job.ignored), why="malformed values")

    def outcome(
        results: list[CheckResult], verdict: Verdict, action: str, node_class: str, *notes: str
    ) -> RunOutcome:
        return RunOutcome(
            node,
            req.phase,
            node_class,
            job,
            results,
            verdict,
            action,
            time.monotonic() - started,
            notes,
        )

    off = _killswitch_on(None, None)
    if off:
        log.warning("disabled", why=off)
        return outcome([], decide([], "manual", None, "pass"), "disabled", "-", off)
    try:
        registry = all_checks()
        config = req.config or load_config(req.config_path, req.env, registry, req.config_read)
        nodecfg = config.for_node(node, registry)
    except (ConfigError, ImportError, OSError) as exc:
        fallback = salvage_config(req.config_path, req.env, req.config_read)
        policy = fallback.on_internal_error
        message = f"config: {exc}" if isinstance(exc, ConfigError) else f"startup: {exc}"
        log.error("internal_error", error=message, on_internal_error=policy)
        verdict = internal_error_verdict(message, req.phase, job.job_id, policy)
        deadline = started + float(fallback.budget_s)
        state.set_run_deadline(deadline)
        keeper.report("deadline", deadline)
        # No config file: no idea where the state is, so nothing is read or recorded.
        keeps_state = fallback.path is not None
        verdict, action, changes = _unhealthy_path(
            req, fallback, node, job, verdict, deadline, req.dry_run, keeps_state
        )
        out = outcome(list(verdict.errors), verdict, action, "-")
        keeper.report("verdict", verdict.exit_code)
        if req.act and keeps_state:
            _record(fallback, out, changes)
        return out
    bind_run(node_class=nodecfg.node_class)
    off = _killswitch_on(config, nodecfg)
    if off:
        log.warning("disabled", why=off)
        return outcome([], decide([], "manual", None, "pass"), "disabled", nodecfg.node_class, off)

    checks = select_checks(registry, nodecfg, req.phase, req.check_patterns, req.tier)
    planned = [
        Planned(
            chk,
            CheckContext(
                req.phase,
                node,
                nodecfg.node_class,
                job,
                nodecfg.settings,
                nodecfg.checks[chk.id].options,
                req.hook_pid or os.getpid(),
                nodecfg.checks[chk.id].timeout_s,
            ),
            nodecfg.checks[chk.id].timeout_s,
        )
        for chk in checks
    ]
    timeouts = [(p.check, p.timeout_s) for p in planned]
    budget_s = run_budget_s(req.phase, timeouts, nodecfg.budget_s, config.deep_budget_s)
    deadline = started + budget_s
    state.set_run_deadline(deadline)  # every wait on the state file ends within the budget
    keeper.report("deadline", deadline)
    # Keep a slice of the budget for talking to Slurm on the unhealthy path.
    reserve = min(5.0, budget_s * 0.25)
    budget = max(0.5, deadline - reserve - time.monotonic())
    # Before any probe forks: a state_dir that does not answer is found once, here, and is
    # then refused at once by every check that keeps state and by the run's own record.
    state_fault = _state_dir_fault(nodecfg.settings.state_dir, budget / 4)
    budget = max(0.5, deadline - reserve - time.monotonic())
    # Held open while the probes and the record use the state (store.state.Holder): their
    # own connections then end without a checkpoint each.
    holder = state.Holder(None if state_fault else nodecfg.settings.state_dir)
    with holder:
        keeper.report("step", "running the checks")
        results = state_fault + [
            with_defaults(r, registry)
            for r in run_checks(planned, budget, config.probe_memory_mb, started=holder.open)
        ]
        if config.hysteresis and any(r.status is Status.WARN for r in results):
            results = _hysteresis(config, nodecfg, results)
        if any(r.status is Status.FAIL for r in results):  # last: nothing report-only drains
            results = report_only(results, _report_only_rules(registry, nodecfg))
        for r in results:
            # nodecheck's own ERROR is logged loudly, with its traceback (checks.boundary)
            (log.error if r.status is Status.ERROR else log.info)("check_result", **r.as_dict())
        verdict = decide(
            results,
            req.phase,
            job.job_id,
            config.on_internal_error,
            _job_scope(config, nodecfg, req.phase, job, results),
        )
        dry_run = req.dry_run or nodecfg.dry_run
        verdict, action, changes = _unhealthy_path(
            req, config, node, job, verdict, deadline, dry_run, keeps_state=True
        )
        emit = log.warning if verdict.failures or verdict.errors else log.info
        emit(
            "verdict",
            status=verdict.status.name,
            summary=verdict.summary,
            action=action,
            reason=verdict.reason,
            exit_code=verdict.exit_code,
            checks=len(planned),
            duration_s=round(time.monotonic() - started, 3),
            dry_run=dry_run,
        )
        out = outcome(results, verdict, action, nodecfg.node_class)
        keeper.report("verdict", verdict.exit_code)
        if req.act:
            _record(config, out, changes)
    return out


def _state_dir_fault(state_dir: Path, timeout_s: float) -> list[CheckResult]:
    """A FAIL naming the state directory when it hangs (the node's filesystem is broken,
    and the checks that could not keep their state must not take the blame) or when it is
    not root's own (store.state.foreign_state: someone else could forge the drains and
    resumes it decides; it is refused, and an admin looks at who could write it)."""
    problem = state.check_responsive(state_dir, min(state.RESPONSIVE_TIMEOUT_S, timeout_s))
    if problem is None:
        return []
    hung = problem.startswith("no answer")
    return [
        CheckResult(
            STATE_CHECK_ID,
            Status.FAIL,
            problem,
            component=str(state_dir),
            values={"hung": True} if hung else {"refused": True},
            severity="critical",
            remedy="admin",
        )
    ]


def _report_only_rules(registry: Mapping[str, Check], nodecfg: NodeConfig) -> dict[str, ReportOnly]:
    """Each check's report-only rule on this node: its declared new signals, as the site's
    `report_only` (node class first) leaves them."""
    return {
        cid: ReportOnly.resolve(nodecfg.checks[cid].report_only, chk.new_signals)
        for cid, chk in registry.items()
        if cid in nodecfg.checks
    }


def _hysteresis(
    config: Config, nodecfg: NodeConfig, results: list[CheckResult]
) -> list[CheckResult]:
    """Repeated WARNs of a check with a [hysteresis] rule become a FAIL (nodecheck/history)."""
    keeper.report("step", f"reading the history in {nodecfg.settings.state_dir}")
    try:
        return history.with_history(
            nodecfg.settings.state_dir,
            lambda h: history.escalate(results, h, config.hysteresis, time.time()),
        )
    except Exception as exc:  # history is an aid: without it the plain verdict stands
        get_logger().warning("hysteresis_skipped", error=f"{type(exc).__name__}: {exc}")
        return results


def _record(
    config: Config, out: RunOutcome, changes: Callable[[history.History], None] | None
) -> None:
    """The run's history row, its state changes and the metrics file: one short write
    transaction, no controller call. Never fails the run."""
    from nodecheck.run.record import record

    keeper.report("step", f"recording the run in {config.state_dir_for(out.node)}")
    rec = history.RunRecord(
        at=clock.now().wall,  # the node's clock, read where tests can drive it (core/clock.py)
        phase=out.phase,
        job=out.job.job_id,
        status=out.verdict.status.name,
        action=out.action_taken,
        duration_s=out.duration_s,
        results=tuple(out.results),
    )
    record(config, out.node, rec, changes)


def _job_scope(
    config: Config, nodecfg: NodeConfig, phase: str, job: JobInfo, results: list[CheckResult]
) -> Callable[[CheckResult], bool] | None:
    """With job_scoped = true: which failures matter to this job (read only on failure)."""
    if not (config.job_scoped and phase in ("prolog", "epilog") and job.gpus is not None):
        return None
    if not any(r.status is Status.FAIL for r in results):
        return None
    from nodecheck.probes.jobscope import JobScope

    try:
        scope = JobScope.from_sysfs(nodecfg.settings.sysfs_root, job.gpus, config.job_scope_hca)
    except OSError as exc:  # without topology every failure counts: the safe side
        get_logger().warning("job_scope_unknown", error=str(exc))
        return None
    get_logger().info("job_scope", gpus=sorted(scope.gpus), local=sorted(scope.local_devices))
    return scope.contains


def _unhealthy_path(
    req: RunRequest,
    config: Config,
    node: str,
    job: JobInfo,
    verdict: Verdict,
    deadline: float,
    dry_run: bool,
    keeps_state: bool,
) -> tuple[Verdict, str, Callable[[history.History], None] | None]:
    """gather -> decide -> act for a hook run whose verdict may need the node's history or
    the controller: the verdict (its exit code as the plan says), the action taken and the
    state changes record must write. A healthy prolog/epilog returns at once."""
    if not (req.act and keeps_state and needs_history(verdict, req.phase)):
        return verdict, "none", None
    from nodecheck.core.plan import Acted
    from nodecheck.run import record
    from nodecheck.run.gather import gather

    settings = PlanSettings.from_config(config, dry_run)
    backend = functools.cache(lambda: _backend(config))
    keeper.report("step", f"reading the history in {config.state_dir_for(node)}")
    situation = gather(
        verdict,
        req.phase,
        node,
        job.job_id,
        config.state_dir_for(node),
        settings,
        deadline,
        backend,
        Path(config.state_fallback_dir),
    )
    planned = plan(verdict, situation, settings)
    acted = Acted(planned.action)
    keeper.report("step", f"acting on the plan ({planned.step.name.lower()})")
    if planned.step in (Step.DRAIN, Step.RESUME):
        from nodecheck.run.act import carry_out

        # Should the call not end (a started pyslurm RPC waits for Slurm's MessageTimeout),
        # the keeper makes it again itself, through scontrol, within the budget's slack.
        keeper.report("planned", planned.step.value, planned.reason, planned.exit_code)

        acted = carry_out(planned, node, backend, breaker_limits(settings), deadline)
        if acted.backed_off is not None:
            planned = after_wave(planned, acted.backed_off, situation, settings)
    if planned.step is Step.BREAKER_HELD and situation.history.held_back is None:
        from nodecheck.notify.breaker_alert import alert_hold_starts

        alert_hold_starts(str(config.values.get("alert_url", "")), node, planned, deadline)
    record.log_outcome(planned, acted, situation, verdict)
    changes = record.state_changes(verdict, planned, acted, situation)
    if planned.exit_code != verdict.exit_code or planned.step is Step.WOULD_DRAIN:
        # Fail open (breaker held) or a dry run: the hook lets the job run.
        action = Action.NONE if planned.step is not Step.DRAIN else verdict.action
        verdict = replace(verdict, exit_code=planned.exit_code, action=action)
    return verdict, acted.action, changes


def _backend(config: Config) -> SlurmBackend:
    from nodecheck.run.act import backend_for

    return backend_for(config, os.environ)
