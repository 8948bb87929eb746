"""`nodecheck validate-job`: what a validation job runs on the node it validates.

gather (the checks of the validation level, the node's validation history) -> decide
(the escalation ladder, a pure function) -> act (drain, reboot through Slurm, alert) ->
record (a history event). The exit code tells the loop that submitted the job what
happened, so it needs no access to this node's files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from nodecheck.core.results import CheckResult
from nodecheck.log import get_logger, setup_logging
from nodecheck.quarantine.ladder import Decision, Step, ValidationHistory, decide_after_validation
from nodecheck.run.config import Config, load_config
from nodecheck.run.pipeline import RunRequest, execute, node_name
from nodecheck.store import history

# Exit codes of a validation job, read by the loop from Slurm (scontrol show job).
EXIT_PASSED = 0
EXIT_DRAINED = 1
EXIT_INTERNAL = 2
EXIT_REBOOT = 3
EXIT_REPLACE = 4
EXIT_HELD_BACK = 5  # failed, but the circuit breaker forbids another drain now
EXIT_NOT_VALIDATED = 6  # nodecheck could not validate the node (e.g. no PyTorch): no drain
EXIT_FOR_STEP = {
    Step.RETURN: EXIT_PASSED,
    Step.DRAIN: EXIT_DRAINED,
    Step.REBOOT: EXIT_REBOOT,
    Step.REPLACE: EXIT_REPLACE,
    Step.NOT_VALIDATED: EXIT_NOT_VALIDATED,
}
# What a site does about a validation that could not run: said in the log, the job's
# AdminComment (which `nodecheck validate` prints) and the node's history (report --history).
NOT_VALIDATED_FIX = (
    "install what it names (the deep checks need PyTorch: the nodecheck[active] extra) or "
    "take those checks out of validate_quick_checks / validate_full_checks"
)
# The breaker step of a validation drain: a few small controller calls, retried this long.
BREAKER_BUDGET_S = 30.0
ALERT_KEY = "validate.alert"  # kv: the alert this node has firing, to resolve on a pass


@dataclass(frozen=True)
class JobOutcome:
    """What one validation job found, decided and did."""

    node: str
    decision: Decision
    action_taken: str
    exit_code: int


def checks_for_level(config: Config, level: str) -> tuple[str, ...]:
    key = "validate_full_checks" if level == "full" else "validate_quick_checks"
    return tuple(config.values[key])


def validation_history(h: history.History) -> ValidationHistory:
    since = h.last_event_at("validate_pass") or 0.0
    return ValidationHistory(
        failures_since_pass=h.events_since("validate_fail", since),
        rebooted_since_pass=h.events_since("reboot", since) > 0,
    )


def run_validation_job(
    level: str,
    config_path: str | None,
    env: Mapping[str, str],
    *,
    fabric: bool = False,
    judge: bool = True,
    final: bool = True,
) -> JobOutcome:
    """`fabric`: this is one node's task of the multi-node deep.fabric job (the fabric
    stage, quarantine/fabric_stage.py): deep.fabric alone. `judge` False: a known-good
    partner there, measured against and never judged (no decision, no action, no record).
    `final` False: the fabric stage follows this node's own job, so a pass here is not yet
    the validation's end (neither recorded nor resolving an alert: the ladder counts
    failures since the last real pass)."""
    node = node_name(None, env)
    config = load_config(config_path, env, _registry())
    # The job's own output goes to /dev/null: its lines go where the node's hooks log.
    problem = setup_logging(
        config.values["log_file"] or None, to_stderr=True, targets=config.values["log_target"]
    )
    log = get_logger()
    if problem:
        log.warning("log_file_unusable", problem=problem)
    state_dir = config.state_dir_for(node)
    job_id = env.get("SLURM_JOB_ID") if (env.get("SLURM_JOB_ID") or "").isdigit() else None
    # gather
    if fabric:
        results = _fabric_rounds(config, config_path, node, env)
    else:
        request = RunRequest(phase="manual", env=env, config_path=config_path, node=node,
                             check_patterns=checks_for_level(config, level))  # fmt: skip
        results = execute(request).results
        if judge:
            measured = results
            results = [*measured, *_own_baseline(config, state_dir, measured)]
            results += _class_median(config, node, measured, env)
    published = _published_figures(results) if judge else ""
    if not judge:
        summary = "partner of the fabric stage: measured against, not judged"
        log.warning("validation_partner", level=level, results=len(results))
        return JobOutcome(node, Decision(Step.RETURN, None, False, summary), "none", EXIT_PASSED)
    past = history.with_history(state_dir, validation_history)
    # decide
    decision = decide_after_validation(results, past, tuple(config.values["escalation"]), job_id)
    if decision.step is Step.RETURN and not final:
        _note_on_job(config, "", published)
        log.warning("validation", level=level, step="await-fabric", reason=None, action="none")
        return JobOutcome(node, decision, "none (the fabric stage follows)", EXIT_PASSED)
    # act
    taken = _act(config, node, decision, state_dir)
    _note_on_job(config, _why_note(decision), published)
    code = EXIT_HELD_BACK if taken.startswith("held back") else EXIT_FOR_STEP[decision.step]
    # record
    kind = {Step.RETURN: "validate_pass", Step.NOT_VALIDATED: "validate_error"}.get(
        decision.step, "validate_fail"
    )

    def record(h: history.History) -> None:
        with h.write():
            h.add_event(kind, _event_text(decision, level), time.time())
            if decision.step is Step.REBOOT and taken == "reboot requested":
                h.add_event("reboot", decision.reason or "", time.time())

    history.with_history(state_dir, record)
    log.warning(
        "validation",
        level=level,
        step=decision.step.value,
        reason=decision.reason,
        action=taken,
        failures_since_pass=past.failures_since_pass,
    )
    return JobOutcome(node, decision, taken, code)


def _own_baseline(
    config: Config, state_dir: os.PathLike, results: list[CheckResult]
) -> list[CheckResult]:
    """The deep figures against the node's own earlier validations (checks/trend/
    baseline.py), stored for the next one: the WARN and FAIL results, which the ladder
    judges with the rest. This job is the run that records the node's state (a manual run
    never does). A state file that cannot be read or written is nodecheck's problem: said
    in the log, and the validation judged on its deep checks alone (never held back, never
    failed for it)."""
    from pathlib import Path

    from nodecheck.checks.trend import baseline
    from nodecheck.core.results import Status

    v = config.values
    if not v["validate_baseline"]:
        return []
    limits = baseline.Limits(
        warn_drop=float(v["validate_baseline_warn_drop"]),
        fail_drop=float(v["validate_baseline_fail_drop"]),
        min_runs=int(v["validate_baseline_min_runs"]),
        window_days=float(v["validate_baseline_window_days"]),
    )
    try:
        judged = baseline.compare(Path(state_dir), results, time.time(), limits)
    except Exception as exc:  # the state file's failure is ours, never the node's
        get_logger().error("deep_baseline_unavailable", error=f"{type(exc).__name__}: {exc}")
        return []
    kept = [r for r in judged if r.status in (Status.WARN, Status.FAIL)]
    if not judged:  # no GPU figure (a CPU-only node, or nothing measured): nothing to say
        return []
    get_logger().warning(
        "deep_baseline", figures=len(judged), warn=sum(r.status is Status.WARN for r in kept),
        fail=sum(r.status is Status.FAIL for r in kept),
        young=sum(r.values.get("level") == "young" for r in judged),
        found=[f"{r.check_id} {r.component}: {r.message}" for r in kept[:10]],
    )  # fmt: skip
    return kept


def _class_median(
    config: Config, node: str, results: list[CheckResult], env: Mapping[str, str]
) -> list[CheckResult]:
    """The deep figures against the median of the node's class (checks/trend/
    class_median.py): the class's published figures read with one `sacct` (slurmdbd, never
    slurmctld), the WARN and FAIL results handed to the ladder. Validation jobs are found
    by this job's own name, which Slurm gives it (SLURM_JOB_NAME: the loop's JOB_NAME; the
    job cannot import the loop, which imports it). No slurmdbd, sacct failing, or no job
    name: the comparison is skipped with a note in the log, never an ERROR or a FAIL."""
    from nodecheck.checks.trend import baseline, class_median
    from nodecheck.core.results import Status
    from nodecheck.slurm import SlurmError
    from nodecheck.slurm.dbd import read_validation_comments

    v, log = config.values, get_logger()
    figures = baseline.figures_of(results)
    if not figures:  # a CPU-only node, or nothing measured: nothing to compare
        return []
    name, now = env.get("SLURM_JOB_NAME", ""), time.time()
    sacct = os.path.join(os.path.dirname(config.scontrol), "sacct")
    try:
        if not v["validate_class_median"]:
            return []
        limits = class_median.ClassLimits(
            warn_drop=float(v["validate_class_median_warn_drop"]),
            fail_drop=float(v["validate_class_median_fail_drop"]),
            min_nodes=int(v["validate_class_median_min_nodes"]),
            window_days=float(v["validate_class_median_window_days"]),
        )
        if not name:
            raise SlurmError("not in a Slurm job (no SLURM_JOB_NAME)")
        since = now - limits.window_days * 86400.0
        comments = read_validation_comments(
            sacct, config.slurm_conf or None, name, start=since, end=now
        )
        registry = _registry()
        mine = config.for_node(node, registry).node_class
        published = class_median.class_figures(
            [(c.node, c.end, c.comment) for c in comments], node,
            lambda other: config.for_node(other, registry).node_class == mine,
        )  # fmt: skip
        judged = class_median.compare(figures, published, limits)
    except SlurmError as exc:  # no accounting is a site's choice, never the node's fault
        log.warning("deep_class_median_skipped", why=str(exc))
        return []
    except Exception as exc:  # our failure, as the baseline's: never the node's
        log.error("deep_class_median_unavailable", error=f"{type(exc).__name__}: {exc}")
        return []
    kept = [r for r in judged if r.status in (Status.WARN, Status.FAIL)]
    log.warning(
        "deep_class_median", node_class=mine, nodes=len(published), figures=len(judged),
        warn=sum(r.status is Status.WARN for r in kept),
        fail=sum(r.status is Status.FAIL for r in kept),
        few=sum(r.values.get("level") == "few" for r in judged),
        found=[f"{r.check_id} {r.component}: {r.message}" for r in kept[:10]],
    )  # fmt: skip
    return kept


def _published_figures(results: list[CheckResult]) -> str:
    """This validation's figures as the class reads them (per figure the node's median
    over its GPUs), "" when it measured none."""
    from nodecheck.checks.trend import baseline, class_median

    return class_median.publish(class_median.node_figures(baseline.figures_of(results)))


def _fabric_rounds(
    config: Config, config_path: str | None, node: str, env: Mapping[str, str]
) -> list[CheckResult]:
    """deep.fabric, once, or once per rail (`validate_fabric_rails`: round i sees GPU i
    alone, and NCCL takes the NIC nearest to it), every node of the job in the same order.
    The round's environment is set in this process before the run forks its probe child,
    which is where torch (and CUDA) start."""
    from dataclasses import replace

    from nodecheck.quarantine.fabric_stage import rail_rounds

    rounds = rail_rounds(int(config.values["validate_fabric_rails"]),
                         env.get("NODECHECK_FABRIC_SECRET", ""))  # fmt: skip
    results: list[CheckResult] = []
    for rail, extra in enumerate(rounds):
        saved = {key: os.environ.get(key) for key in extra}
        os.environ.update(extra)
        try:
            request = RunRequest(phase="manual", env={**env, **extra}, config_path=config_path,
                                 node=node, check_patterns=("deep.fabric",))  # fmt: skip
            got = execute(request).results
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        # Per rail, the drain reason names the GPU whose rail was slow.
        results += [replace(r, component=f"gpu{rail}") for r in got] if extra else got
    return results


def _event_text(decision: Decision, level: str) -> str:
    if decision.step is Step.NOT_VALIDATED:
        return f"{decision.summary} (level {level}); {NOT_VALIDATED_FIX}"
    return decision.reason or f"validation passed (level {level})"


def _registry() -> Mapping:
    from nodecheck.checks.registry import all_checks

    return all_checks()


def _act(config: Config, node: str, decision: Decision, state_dir: os.PathLike) -> str:
    """Carry out the decision through Slurm and the alert webhook; report what was done."""
    from nodecheck.run.act import backend_for, release_slots
    from nodecheck.slurm import SlurmError
    from nodecheck.slurm.jobs import SlurmJobs
    from nodecheck.slurm.scontrol import ScontrolBackend

    log = get_logger()
    if decision.step is Step.RETURN:
        _resolve_alert(config, node, state_dir)
        return "none"
    if decision.step is Step.NOT_VALIDATED:
        # Our problem, not the node's: nothing is drained; the loop leaves the node as it
        # found it. Said loudly, with what to do, where an admin looks.
        log.error("validation_not_possible", node=node, why=decision.summary, fix=NOT_VALIDATED_FIX)
        return "none (not validated)"
    assert decision.reason is not None
    backend = backend_for(config, os.environ)
    slots, held = _breaker_slots(config, backend, node)
    if held:
        log.error("circuit_breaker_open", why=held, would_drain=decision.reason)
        return "held back by the circuit breaker"
    try:
        if decision.step is Step.REBOOT:
            cli = ScontrolBackend(config.scontrol, config.slurm_conf or None)
            SlurmJobs(cli).reboot(node, decision.reason)
            taken = "reboot requested"
        else:
            backend.drain(node, decision.reason)
            taken = "drained"
    except SlurmError as exc:
        log.error("validation_action_failed", step=decision.step.value, error=str(exc))
        release_slots(backend, slots)  # the drain they were for did not happen
        taken = f"{decision.step.value} failed"
    if decision.alert:
        _fire_alert(config, node, decision, state_dir)
    return taken


def _why_note(decision: Decision) -> str:
    """What the job tells the loop about a validation that could not run ("" otherwise)."""
    if decision.step is Step.NOT_VALIDATED:
        return f"{decision.summary}; {NOT_VALIDATED_FIX}"
    return ""


def _note_on_job(config: Config, text: str, figures: str = "") -> None:
    """Tell the loop why (`text`), and the class the node's figures (`figures`, checks/
    trend/class_median.py: last, so the loop's `why_of` reads the why as before), in this
    job's AdminComment, one write (best effort: the exit code says the rest)."""
    from nodecheck.checks.trend.class_median import with_figures
    from nodecheck.slurm import SlurmError
    from nodecheck.slurm.jobs import SlurmJobs
    from nodecheck.slurm.scontrol import ScontrolBackend

    job = os.environ.get("SLURM_JOB_ID", "")
    comment = with_figures(" ".join(text.split())[:1000], figures)
    if not job.isdigit() or not comment:
        return
    cli = ScontrolBackend(config.scontrol, config.slurm_conf or None)
    try:
        SlurmJobs(cli).note_on_job(int(job), comment)
    except SlurmError as exc:
        get_logger().warning("validation_note_not_set", error=str(exc))


def _breaker_slots(config: Config, backend: object, node: str) -> tuple[list[str], str | None]:
    """Validation drains count against the same breaker as the hooks' drains, by the same
    exact step (run/act.py `take_slots`: a slot slurmctld lets one node hold): a wave of
    failing validations is more often a bad deep-check setting than bad hardware. Returns
    the slots taken, or why the breaker holds the drain back."""
    from nodecheck.core.plan import BreakerState
    from nodecheck.run.act import breaker_limits, take_slots
    from nodecheck.slurm import SlurmError

    limits = breaker_limits(config)
    if not limits.enabled:
        return [], None
    try:
        taken = take_slots(backend, node, limits, time.monotonic() + BREAKER_BUDGET_S)  # type: ignore[arg-type]
    except SlurmError as exc:
        return [], f"cannot claim a breaker slot: {exc}"
    if isinstance(taken, BreakerState):
        return [], taken.why
    return taken, None


def _fire_alert(config: Config, node: str, decision: Decision, state_dir: os.PathLike) -> None:
    from nodecheck.core.reason import parse_reason
    from nodecheck.notify.alertmanager import Alert, AlertError, send

    url = config.values["alert_url"]
    parsed = parse_reason(decision.reason or "")
    alert = Alert(
        node=node,
        check=parsed.check_id if parsed else "unknown",
        severity=(parsed.severity if parsed else "") or "critical",
        action=decision.step.value,
        summary=decision.reason or "",
    )
    if url:
        try:
            send(url, alert)
        except AlertError as exc:
            get_logger().error("alert_not_sent", error=str(exc))
    history.with_history(state_dir, lambda h: _keep(h, ALERT_KEY, alert.__dict__))


def _resolve_alert(config: Config, node: str, state_dir: os.PathLike) -> None:
    from nodecheck.notify.alertmanager import Alert, AlertError, send

    firing = history.with_history(state_dir, lambda h: h.store.get_json(ALERT_KEY))
    if not firing:
        return
    url = config.values["alert_url"]
    if url:
        try:
            send(url, Alert(**firing), resolved=True)
        except AlertError as exc:
            get_logger().error("alert_not_sent", error=str(exc))
            return
    history.with_history(state_dir, lambda h: _keep(h, ALERT_KEY, None))


def _keep(h: history.History, key: str, value: object) -> None:
    with h.write():
        h.put(key, value)
