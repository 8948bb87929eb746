"""Command line: `nodecheck run|hook|list|explain|resume|report|agent`.

`hook PHASE` is what the prolog/epilog/health entrypoints call (see nodecheck.entry.hook).
`run` is the same pipeline for a human: a table, no action.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# Light on purpose: `nodecheck hook` forks its run before the rest of nodecheck is loaded
# (nodecheck.run.codes says why); each command imports what it needs.
from nodecheck.entry.hook import HookArgs, run_hook
from nodecheck.quarantine import DEFAULT_WHY
from nodecheck.run.codes import EXIT_FAIL, EXIT_INTERNAL, EXIT_OK, HOOK_PHASES, PHASES, TIERS

if TYPE_CHECKING:
    import argparse

EXIT_BROKEN_PIPE = 141  # what a shell reports for a process its reader stopped (128 + SIGPIPE)

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}    healthy (warnings allowed); for `hook`: the job may run
  {EXIT_FAIL}    a check failed (`hook`: Slurm drains the node and requeues the job)
  {EXIT_INTERNAL}    usage, config or internal error; `run` under the killswitch (nothing checked)
  {EXIT_BROKEN_PIPE}  the reader closed the pipe early (`nodecheck list | head`)
"""


def _common_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """--config and -v, accepted before and after the subcommand. On a subcommand they
    default to "not given", so they never undo what was given before it."""
    import argparse

    keep = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "--config", help="config file (default: see README, 'Configuration')", **keep
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging on stderr", **keep
    )


def _parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="nodecheck",
        description=__doc__.splitlines()[0],
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        child = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common_options(child, top=False)
        return child

    run = command("run", "run checks now and print the results (never drains)")
    run.add_argument(
        "--phase",
        choices=PHASES,
        default="manual",
        help="run the checks of this phase (default: manual)",
    )
    run.add_argument(
        "--check",
        action="append",
        default=[],
        metavar="ID",
        help="only this check (id or glob like 'gpu.*'); repeatable",
    )
    run.add_argument(
        "--tier",
        choices=TIERS,
        help="only checks of this tier; 'deep' measures GPUs and fabric (docs/deep.md). "
        "Default: 'fast' for the manual phase without --check, else every tier",
    )
    run.add_argument("--node", help="node name to resolve the node class for")
    run.add_argument("--json", action="store_true", help="machine-readable output")
    run.add_argument("--job", metavar="ID", help="job id to check for (epilog checks)")
    run.add_argument(
        "--failed", action="store_true", help="show only what is not fine (FAIL, ERROR, WARN)"
    )

    hook = command("hook", "entrypoint for Slurm Prolog/Epilog/HealthCheckProgram")
    hook.add_argument("phase", choices=HOOK_PHASES)
    hook.add_argument("--dry-run", action="store_true", help="log what would be drained")

    lst = command("list", "list checks and the phases they run in")
    lst.add_argument("--json", action="store_true")
    lst.add_argument("--node", help="show enabled/phases as configured for this node")

    explain = command("explain", "what a check looks at and what to do when it fails")
    explain.add_argument("check_id", help="a check id or a glob like 'host.*'")

    resume = command("resume", "resume this node, only if nodecheck drained it")
    resume.add_argument("--node", help="node name (default: this host)")
    resume.add_argument(
        "--force", action="store_true", help="resume without re-running the checks first"
    )

    agent = command(
        "agent", "serve hook runs from a warm process (docs/agent.md); runs until stopped"
    )
    agent.add_argument(
        "--socket",
        help="Unix socket (default: $NODECHECK_AGENT_SOCKET, else /run/nodecheck/agent.sock)",
    )

    report = command(
        "report", "nodes drained by nodecheck, cluster-wide (from Slurm; admin drains left out)"
    )
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.add_argument(
        "--history",
        metavar="NODELIST",
        help="per node: drains, validations, reboots, returns (nodecheck + slurmdbd)",
    )
    report.add_argument("--days", type=float, default=30, help="with --history: how far back")

    validate = command(
        "validate",
        "quarantine nodes, run validation jobs, return or drain them (docs/operations.md)",
    )
    validate.add_argument(
        "nodelist", nargs="?", help="nodes, as a Slurm hostlist (e.g. 'gpu[001-004]')"
    )
    validate.add_argument(
        "--idle", action="store_true", help="idle nodes, longest since validation first (cron)"
    )
    validate.add_argument(
        "--max-share", default="5%", help="with --idle: at most this share of any partition"
    )
    validate.add_argument(
        "--pending", action="store_true", help="nodes nodecheck drained that may come back"
    )
    validate.add_argument("--level", choices=("quick", "full"), default="quick")
    validate.add_argument("--why", default=DEFAULT_WHY, help="goes into the jobs' comments")
    validate.add_argument("--timeout", type=float, help="seconds to wait for the jobs")
    validate_job = command(
        "validate-job", "(run inside a validation job) validate this node and act"
    )
    validate_job.add_argument("--level", choices=("quick", "full"), default="quick")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    try:
        return _dispatch(_parser().parse_args(words))
    except BrokenPipeError:
        # `nodecheck list | head`: the reader has what it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not fail a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _dispatch(args: argparse.Namespace) -> int:
    from nodecheck.log import setup_logging

    if args.command == "hook":
        return run_hook(HookArgs(args.phase, args.config, args.dry_run, args.verbose))
    if args.command == "agent":  # a service: its log is its stderr (the journal)
        from nodecheck.entry.agent import main as agent_main

        setup_logging(None, to_stderr=True, verbose=args.verbose)
        return agent_main(args.socket)
    # A person at a terminal: log lines only with -v, rendered for reading.
    setup_logging(None, to_stderr=args.verbose, verbose=args.verbose, console=True)
    if args.command == "run":
        return _run(args)
    if args.command in ("list", "explain"):
        from nodecheck.entry import catalogue

        return catalogue.list_checks(args) if args.command == "list" else catalogue.explain(args)
    if args.command == "report" and args.history:
        from nodecheck.quarantine.command import history_command

        return history_command(args.config, args.history, args.days, args.json)
    if args.command == "report":
        return _report(args)
    if args.command in ("validate", "validate-job"):
        from nodecheck.quarantine.command import validate_command, validate_job_command

        setup_logging(None, to_stderr=True, verbose=args.verbose)
        if args.command == "validate":
            return validate_command(args)
        return validate_job_command(args.config, args.level)
    return _resume(args)


def _run(args: argparse.Namespace) -> int:
    from nodecheck.run.pipeline import RunRequest, UsageError, execute
    from nodecheck.slurm import SlurmError

    env = dict(os.environ)
    if args.job:
        env["SLURM_JOB_ID"] = args.job
    try:
        out = execute(
            RunRequest(
                phase=args.phase,
                env=env,
                config_path=args.config,
                node=args.node,
                check_patterns=tuple(args.check),
                tier=_tier(args),
            )
        )
    except (UsageError, SlurmError) as exc:
        print(f"nodecheck: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    disabled = out.action_taken == "disabled"
    if args.json:
        print(json.dumps({**_outcome_json(out), "disabled": disabled}, indent=2))
    else:
        from nodecheck.entry.tables import run_report, show

        show(run_report(out, failed_only=args.failed))
    # Under the killswitch nothing was checked: not a clean bill of health.
    return EXIT_INTERNAL if disabled else out.verdict.exit_code


def _tier(args: argparse.Namespace) -> str | None:
    """The tier to run. A plain `nodecheck run` is the fast tier; a `--check` names its checks
    whatever their tier; another phase shows what its hook would run (phases decide)."""
    if args.tier:
        return args.tier
    return "fast" if args.phase == "manual" and not args.check else None


def _outcome_json(out: object) -> dict:
    from nodecheck.run.pipeline import RunOutcome

    assert isinstance(out, RunOutcome)
    return {
        "node": out.node,
        "node_class": out.node_class,
        "phase": out.phase,
        "job": out.job.job_id,
        "status": out.verdict.status.name,
        "summary": out.verdict.summary,
        "reason": out.verdict.reason,
        "action": out.action_taken,
        "exit_code": out.verdict.exit_code,
        "duration_s": round(out.duration_s, 3),
        "notes": list(out.notes),
        "results": [r.as_dict() for r in out.results],
    }


def _resume(args: argparse.Namespace) -> int:
    import time

    from nodecheck.checks.registry import all_checks
    from nodecheck.run.config import ConfigError, load_config
    from nodecheck.run.pipeline import RunRequest, execute, node_name
    from nodecheck.slurm import SlurmError, set_call_deadline
    from nodecheck.slurm.act import backend_for, resume_if_ours

    node = node_name(args.node, os.environ)
    try:
        config = load_config(args.config, os.environ, all_checks())
    except ConfigError as exc:
        print(f"nodecheck: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    if not args.force:
        out = execute(
            RunRequest(phase="health", env=dict(os.environ), config_path=args.config, node=node)
        )
        if out.verdict.failures:
            from nodecheck.entry.tables import run_report, show

            show(run_report(out, failed_only=True))
            print(f"not resuming {node}: checks still fail (use --force to resume anyway)")
            return EXIT_FAIL
    set_call_deadline(time.monotonic() + config.budget_s)  # a dead controller: not forever
    try:
        result = resume_if_ours(backend_for(config, os.environ), node)
    except SlurmError as exc:
        print(f"nodecheck: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    print(f"{node}: {result}")
    return EXIT_FAIL if result.startswith("refused") else EXIT_OK


def _report(args: argparse.Namespace) -> int:
    """Every node Slurm shows drained with a `nodecheck:` reason: check, component, since
    when, and how often it was drained within flap_window_s (from the node's history when
    this host has it, else from a "flapping (drained Nx ...)" reason, else unknown)."""
    import re
    import time

    from nodecheck.checks.registry import all_checks
    from nodecheck.run.config import ConfigError, load_config
    from nodecheck.run.reason import parse_reason
    from nodecheck.slurm import SlurmError
    from nodecheck.slurm.act import backend_for
    from nodecheck.store import history

    try:
        config = load_config(args.config, os.environ, all_checks())
        nodes = backend_for(config, os.environ).list_nodes()
    except (ConfigError, SlurmError) as exc:
        print(f"nodecheck: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    window = float(config.flap_window_s)
    since = time.time() - window
    rows = []
    for info in sorted(nodes, key=lambda n: n.name):
        if not info.drained_by_nodecheck:
            continue
        parsed = parse_reason(info.reason)
        flapping = bool(parsed and history.is_flapping_message(parsed.message))
        drains = history.read_only_history(
            config.state_dir_for(info.name), lambda h: h.events_since("drain", since)
        )
        source = "history" if drains is not None else None
        if drains is None and parsed and flapping:
            found = re.match(r"flapping \(drained (\d+)x", parsed.message)
            drains, source = (int(found[1]), "reason") if found else (None, None)
        rows.append(
            {
                "node": info.name,
                "state": "+".join(info.states),
                "check": parsed.check_id if parsed else None,
                "component": parsed.component if parsed else None,
                "message": parsed.message if parsed else None,
                "severity": (parsed.severity or None) if parsed else None,
                "remedy": (parsed.remedy or None) if parsed else None,
                "phase": parsed.phase if parsed else None,
                "job": (parsed.job_id or None) if parsed else None,
                "since": info.reason_time or None,
                "by": info.reason_user or None,
                "flapping": flapping,
                "drains_in_window": drains,
                "drains_source": source,
                "window": history.human_window(window),
                "reason": info.reason,
            }
        )
    breakers, held = _breaker_report(config, nodes)
    held_back = _held_back(config, nodes)
    if args.json:
        doc = {
            "count": len(rows),
            "nodes": rows,
            "breaker": breakers,
            "held_back": held_back,
            "held_by_slurm": held,
        }
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    _print_breaker_report(breakers, held)
    _print_held_back(held_back)
    if not rows:
        print("no nodes drained by nodecheck")
        return EXIT_OK
    head = (
        "NODE",
        "STATE",
        "CHECK",
        "COMPONENT",
        "SINCE",
        f"DRAINS/{history.human_window(window)}",
        "SEVERITY",
        "ACTION",
    )
    from nodecheck.entry.tables import show, table

    cells = [
        (
            r["node"],
            r["state"],
            r["check"] or "?",
            r["component"] or "?",
            r["since"] or "?",
            "?" if r["drains_in_window"] is None else str(r["drains_in_window"]),
            r["severity"] or "?",
            r["remedy"] or "?",
            r["reason"],
        )
        for r in rows
    ]
    show([table((*head, "REASON"), cells)])
    from nodecheck.hostlist import collect

    print(f"{len(rows)} node(s) drained by nodecheck: {collect(r['node'] for r in rows)}")
    return EXIT_OK


# Slurm's own reason when a prolog/epilog exits non-zero without setting one: what a node
# shows when nodecheck's circuit breaker left the drain to Slurm.
_SLURM_HOOK_FAILURE = ("Prolog error", "Epilog error", "prolog failed", "epilog failed")


def _breaker_report(config: Any, nodes: list[Any]) -> tuple[list[dict], list[dict]]:
    """Per partition: nodecheck's drains against the breaker limit; and the nodes Slurm
    drained for a failed prolog/epilog, which is where a tripped breaker leaves them."""
    from nodecheck.run.breaker import partition_status
    from nodecheck.slurm.act import breaker_limits

    breakers = [
        {
            "partition": b.partition,
            "open": b.open,
            "drained": b.drained,
            "total": b.total,
            "why": b.why,
        }
        for b in partition_status(nodes, breaker_limits(config))
    ]
    held = [
        {
            "node": n.name,
            "reason": n.reason,
            "since": n.reason_time or None,
            "partitions": list(n.partitions),
        }
        for n in sorted(nodes, key=lambda n: n.name)
        if n.drained and n.reason.startswith(_SLURM_HOOK_FAILURE)
    ]
    return breakers, held


def _held_back(config: Any, nodes: list[Any]) -> list[dict]:
    """Nodes the circuit breaker keeps from a drain: failing, running jobs, since when (from
    each node's history where this host has it)."""
    import time

    from nodecheck.run.plan import HeldBack
    from nodecheck.store import history

    out = []
    for info in sorted(nodes, key=lambda n: n.name):
        stored = history.read_only_history(
            config.state_dir_for(info.name), lambda h: h.store.get_json(history.BREAKER_HOLD)
        )
        held = HeldBack.from_json(stored)
        if held is None:
            continue
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(held.since))
        out.append({"node": info.name, "since": since, "reason": held.reason, "why": held.why})
    return out


def _print_held_back(held_back: list[dict]) -> None:
    if not held_back:
        return
    print(
        f"{len(held_back)} node(s) held back by the circuit breaker (failing, not drained, "
        "jobs still run; drained oldest first once the breaker closes):"
    )
    for h in held_back:
        print(f"  {h['node']}  since {h['since']}  {h['reason']}")


def _print_breaker_report(breakers: list[dict], held: list[dict]) -> None:
    for b in breakers:
        if b["open"]:
            print(
                f"CIRCUIT BREAKER OPEN in partition {b['partition']}: {b['why']}; "
                "nodecheck stops draining there (breaker_open_action decides whether jobs run)"
            )
    if held:
        print(
            f"{len(held)} node(s) drained by Slurm after a failed prolog/epilog "
            "(nodecheck did not drain them: breaker open, or nodecheck could not reach "
            "the controller); a human decides:"
        )
        for h in held:
            print(f"  {h['node']}  since {h['since'] or '?'}  {h['reason']}")
        print()
