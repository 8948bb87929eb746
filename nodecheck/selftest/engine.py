"""Run each enabled check on its canaries through the run path the hooks use, and judge.

Each input is one run of `nodecheck.run.pipeline.execute` (the checks' probe processes,
runner, deadlines, pool members where the agent lent them) with the check alone, under a
config made from the node's own (its options, timeouts, budget) with these differences:

- `state_dir` is a fresh private directory per input: cursors, baselines and history of
  the node are never read or written;
- the run does not act (`RunRequest.act` False: no Slurm, no history row, no metrics),
  and as a second guard `dry_run`, `scontrol` pointing at nothing, no metrics or log file,
  no alert URL, no job scoping;
- the probes look at the canary's data (nvml, sysfs_root, procfs_root, and the options it
  pins, nodecheck.selftest.canaries).

The run's own log lines (check results of made-up faults) are muted: a FAIL line about a
canary GPU must never reach a site's log alerting.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodecheck.checks.registry import Check, all_checks, match_ids
from nodecheck.core.isolate import stat_answers
from nodecheck.core.results import CheckResult, Status
from nodecheck.log import LOGGER_NAME, bind_run, bound_fields, structlog
from nodecheck.run.config import Config, NodeConfig, load_config, parse_config
from nodecheck.run.pipeline import RunOutcome, RunRequest, UsageError, execute, node_name
from nodecheck.selftest.canaries import COMPONENT_OF, DEEP_WHY, WAIVED, Case, canary_for
from nodecheck.selftest.report import CaseResult, CheckVerdict

PHASE_ORDER = ("prolog", "epilog", "health", "manual")
# Settings every canary run gets, whatever the node's: it changes nothing and tells nobody.
SAFE: dict[str, Any] = {
    "metrics_file": "",
    "log_file": "",
    "log_target": ["stderr"],
    "dry_run": True,
    "disabled": False,
    "on_internal_error": "pass",
    "slurm_backend": "scontrol",
    "scontrol": "/nonexistent/nodecheck-selftest/scontrol",
    "slurm_conf": "",
    "alert_url": "",
    "job_scoped": False,
    "validate_new_nodes": False,
}


@dataclass(frozen=True)
class Plan:
    """What to selftest: the node, its config, and the checks (enabled, or matched)."""

    node: str
    config: Config
    nodecfg: NodeConfig
    checks: tuple[str, ...]


def make_plan(
    config_path: str | None, env: Mapping[str, str], patterns: tuple[str, ...] = ()
) -> Plan:
    """ConfigError for a broken config, UsageError for a pattern that matches nothing."""
    registry = all_checks()
    config = load_config(config_path, env, registry)
    node = node_name(None, env)
    nodecfg = config.for_node(node, registry)
    if patterns:
        try:
            checks = match_ids(patterns, registry)
        except KeyError as exc:
            raise UsageError(f"no check matches {exc.args[0]!r} (see `nodecheck list`)") from None
    else:
        checks = [cid for cid, s in nodecfg.checks.items() if s.enabled and s.phases]
    return Plan(node, config, nodecfg, tuple(checks))


@contextlib.contextmanager
def _quiet(muted: bool) -> Iterator[None]:
    """The canary runs' own lines muted, and the caller's bound fields kept (each run binds
    its node, phase and job)."""
    logger = logging.getLogger(LOGGER_NAME)
    before, fields = logger.disabled, dict(bound_fields())
    logger.disabled = muted or before
    try:
        yield
    finally:
        logger.disabled = before
        structlog.contextvars.clear_contextvars()
        bind_run(**fields)


def run_plan(
    plan: Plan, via: str, deadline: float, workdir: Path | None = None, muted: bool = True
) -> tuple[CheckVerdict, ...]:
    """Every check of the plan on its canaries, ending by `deadline` (time.monotonic()),
    their files in a directory of their own (under `workdir`, else the temp directory)."""
    registry = all_checks()
    where = workdir or Path(tempfile.gettempdir())
    # A temp directory on a filesystem that stopped answering would hold us in the kernel:
    # looked at from a child with a deadline first, as the hooks look at their state_dir.
    wait_s = min(2.0, max(0.1, deadline - time.monotonic()))
    try:
        problem = "" if stat_answers(where, wait_s) else f"no answer within {wait_s:g}s"
    except OSError as exc:
        problem = f"cannot look at it: {exc}"
    if problem:
        why = f"selftest could not make its files in {where}: {problem}"
        return tuple(CheckVerdict(cid, via, "error", why) for cid in plan.checks)
    base = Path(tempfile.mkdtemp(prefix="nodecheck-selftest-", dir=where))
    try:
        with _quiet(muted):
            return tuple(_check(plan, registry[cid], via, base, deadline) for cid in plan.checks)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _check(plan: Plan, chk: Check, via: str, base: Path, deadline: float) -> CheckVerdict:
    canary = canary_for(chk)
    if canary is None:
        waived = DEEP_WHY if chk.tier == "deep" else WAIVED.get(chk.id)
        why = waived or "no canary for this check: it cannot prove itself"
        return CheckVerdict(chk.id, via, "no-canary", why, counts=waived is None)
    node_opts = dict(plan.nodecfg.checks[chk.id].options)
    cases = []
    for case in canary.cases:
        started = time.monotonic()
        try:
            cases.append(_case(plan, chk, case, node_opts, base, deadline))
        except Exception as exc:  # a canary that cannot be built or run is an error, said
            msg = f"selftest could not run it: {type(exc).__name__}: {exc}"
            cases.append(CaseResult(case.name, case.good, "error", "", msg[:300], None, 0.0))
        cases[-1] = cases[-1].took(time.monotonic() - started)
    return CheckVerdict.judged(chk.id, via, tuple(cases))


def _case(
    plan: Plan, chk: Check, case: Case, node_opts: dict[str, Any], base: Path, deadline: float
) -> CaseResult:
    left = deadline - time.monotonic()
    if left < 1.0:
        return CaseResult(case.name, case.good, "error", "", "selftest time limit reached", None)
    budget_s = min(plan.nodecfg.budget_s, left / (1 + len(case.before)))  # each run's share
    work = Path(tempfile.mkdtemp(prefix=f"{chk.id}-", dir=base))
    setup = case.build(work, node_opts)
    options = {**node_opts, **setup.options}
    phase = case.phase or _hook_phase(plan.nodecfg, chk.id)
    config = _config(plan, chk, options, setup.settings, work, budget_s)
    env = {"SLURMD_NODENAME": plan.node, **setup.env}
    for earlier in case.before:  # a baseline in the same private state (ib.counters' prolog)
        _execute(plan, config, earlier, env, chk.id)
    if setup.between is not None:
        setup.between()
    out = _execute(plan, config, phase, env, chk.id)
    component = COMPONENT_OF[chk.id](options) if chk.id in COMPONENT_OF else case.component
    return judge(case, chk.id, out, options, component)


def _hook_phase(nodecfg: NodeConfig, cid: str) -> str:
    """The first hook phase the node runs the check in: the judgement a job start gets."""
    phases = nodecfg.checks[cid].phases
    return next((p for p in PHASE_ORDER if p in phases), "manual")


def _config(
    plan: Plan,
    chk: Check,
    options: Mapping[str, Any],
    settings: Mapping[str, str],
    work: Path,
    budget_s: float,
) -> Config:
    """The node's config for this one check, pointed at the canary (validated like a file:
    a canary option of the wrong type is refused here, not guessed at by the check)."""
    node = plan.nodecfg
    values = dict(plan.config.values)
    values.update(SAFE)
    values.update(
        sysfs_root=str(node.settings.sysfs_root),
        procfs_root=str(node.settings.procfs_root),
        nvml=node.settings.nvml,
        budget_s=max(1.0, budget_s),
        state_dir=str(work / "state"),
        killswitch_file=str(work / "killswitch-never-created"),
    )
    values.update(settings)
    # Its phases do not matter: the run names the check (pipeline.select_checks).
    table: dict[str, Any] = {"enabled": True, "timeout_s": node.checks[chk.id].timeout_s}
    # TOML has no null: an option left unset is its default (None) again.
    table.update({k: v for k, v in options.items() if v is not None})
    return parse_config({**values, "checks": {chk.id: table}}, plan.config.path, all_checks())


def _execute(plan: Plan, config: Config, phase: str, env: dict[str, str], cid: str) -> RunOutcome:
    request = RunRequest(phase=phase, env=env, node=plan.node, check_patterns=(cid,), config=config)
    return execute(request)


def judge(
    case: Case, cid: str, out: RunOutcome, options: Mapping[str, Any], component: str | None
) -> CaseResult:
    """One input's outcome: a good input passed or fired, a bad one caught or missed; an
    ERROR of the check, or no result at all, is an error either way."""
    results = [r for r in out.results if r.check_id == cid]

    def result(outcome: str, lead: CheckResult | None, note: str = "") -> CaseResult:
        status = lead.status.name if lead else ""
        text = f"{lead.component}: {lead.message}" if lead else ""
        message = f"{text} {note}".strip()[:300]
        reason = out.verdict.reason if outcome == "caught" else None
        return CaseResult(case.name, case.good, outcome, status, message, reason)

    if out.action_taken == "disabled":
        return result("error", None, "run disabled: " + "; ".join(out.notes))
    if not results:
        return result("error", None, f"{cid} gave no result")
    errors = [r for r in results if r.status is Status.ERROR]
    if errors:
        return result("error", errors[0])
    if case.good:
        fired = [r for r in results if r.status in (Status.FAIL, Status.WARN)]
        if fired:
            return result("fired", fired[0])
        passed = [r for r in results if r.status is Status.PASS]
        if not passed:
            return result("error", results[0], "(the good input was not judged)")
        return result("passed", passed[0])
    want = case.expect(options)
    hits = [
        r for r in results if r.status is want and (component is None or r.component == component)
    ]
    if hits:
        return result("caught", hits[0])
    named = [r for r in results if r.component == component]
    lead = max(named or results, key=lambda r: r.status)
    where = f" on {component}" if component else ""
    return result("missed", lead, f"(expected {want.name}{where})")
