"""Command line: `nodecheck run|hook|list|explain|resume|report|validate|agent|selftest|domain`.

`hook PHASE` is what the prolog/epilog/health entrypoints call (see nodecheck.entry.hook).
`run` is the same pipeline for a human: a table, no action.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nodecheck.core.codes import EXIT_FAIL, EXIT_INTERNAL, EXIT_OK, HOOK_PHASES, PHASES, TIERS

# Light on purpose: `nodecheck hook` forks its run before the rest of nodecheck is loaded
# (nodecheck.core.codes says why); each command imports what it needs.
from nodecheck.entry.hook import HookArgs, run_hook
from nodecheck.quarantine import DEFAULT_WHY

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
    agent.add_argument(
        "--selftest-every",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="run `nodecheck selftest` this often, the first time --selftest-delay after the "
        "start (default: daily; 0: never)",
    )
    agent.add_argument(
        "--selftest-delay", type=float, default=60.0, metavar="SECONDS", help=argparse.SUPPRESS
    )
    agent.add_argument(
        "--status",
        action="store_true",
        help="ask the running agent what it holds (probe pool, stuck probes) and exit: "
        "0 fine, 1 probes stuck in the kernel, 3 no agent",
    )
    agent.add_argument("--json", action="store_true", help="with --status: machine-readable")

    # Here, not in nodecheck.selftest: building this parser is on every hook's path.
    selftest = command(
        "selftest",
        "feed every enabled check a known-bad and a known-good canary through the hooks' run "
        "path, in-process and through the agent; changes nothing (docs/selftest.md)",
    )
    selftest.add_argument("--json", action="store_true", help="machine-readable output")
    selftest.add_argument(
        "--check",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only checks matching this id or glob; repeatable (no metrics written then)",
    )
    selftest.add_argument(
        "--via",
        choices=("auto", "inprocess", "agent", "both"),
        default="auto",
        help="auto (default): in-process, and through the agent when its socket exists",
    )
    selftest.add_argument("--socket", help="the agent's socket (default: as `agent`)")
    selftest.add_argument("--timeout", type=float, default=120.0, help="seconds, in all")

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
    report.add_argument(
        "--lemons",
        action="store_true",
        help="rank nodes by drains, failed jobs and time drained over --days (slurmdbd)",
    )
    report.add_argument("--prom", action="store_true", help="with --lemons: Prometheus text")

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
    # The fabric stage (quarantine/fabric_stage.py): set by validate, not by people.
    # --fabric-batch: the batch step of its multi-node job, which starts a --fabric task on
    # every node; --judge: the quarantined nodes among them (the rest are partners).
    for flag in ("--fabric", "--fabric-batch", "--then-fabric"):
        validate_job.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    validate_job.add_argument("--judge", default="", help=argparse.SUPPRESS)
    domain = command(  # nodecheck/entry/domain.py (NVLink domains: GB200/GB300 NVL72 racks)
        "domain", "compare the nodes of each NVLink domain from their runs; name the odd one"
    )
    domain.add_argument(
        "files", nargs="*", metavar="FILE", help="`nodecheck run --json` output (default: stdin)"
    )
    domain.add_argument("--topology", help="Slurm's topology.conf/.yaml: domains are its blocks")
    domain.add_argument("--json", action="store_true", help="machine-readable output")
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
    if args.command == "agent" and args.status:
        from nodecheck.entry.agent_client import DEFAULT_SOCKET
        from nodecheck.entry.agent_status import main as status_main

        where = args.socket or os.environ.get("NODECHECK_AGENT_SOCKET") or DEFAULT_SOCKET
        return status_main(where, args.json)
    if args.command == "agent":  # a service: its log is its stderr (the journal)
        from nodecheck.entry.agent import main as agent_main

        setup_logging(None, to_stderr=True, verbose=args.verbose)
        return agent_main(args.socket, args.selftest_every, args.selftest_delay)
    # A person at a terminal: log lines only with -v, rendered for reading.
    setup_logging(None, to_stderr=args.verbose, verbose=args.verbose, console=True)
    if args.command == "run":
        return _run(args)
    if args.command == "selftest":
        from nodecheck.selftest.command import selftest_command

        return selftest_command(args)
    if args.command in ("list", "explain"):
        from nodecheck.entry import catalogue

        return catalogue.list_checks(args) if args.command == "list" else catalogue.explain(args)
    if args.command == "report" and args.lemons:
        from nodecheck.entry.lemons import lemons_command

        return lemons_command(args)
    if args.command == "report" and args.history:
        from nodecheck.quarantine.command import history_command

        return history_command(args.config, args.history, args.days, args.json)
    if args.command == "domain":
        from nodecheck.entry.domain import domain_command

        return domain_command(args)
    if args.command == "report":
        from nodecheck.entry.report import report

        return report(args)
    if args.command in ("validate", "validate-job"):
        from nodecheck.quarantine import command as quarantine

        setup_logging(None, to_stderr=True, verbose=args.verbose)
        if args.command == "validate":
            return quarantine.validate_command(args)
        if args.fabric_batch:
            return quarantine.validate_fabric_job_command(args.config, args.level, args.judge)
        return quarantine.validate_job_command(
            args.config, args.level, args.fabric, args.judge, args.then_fabric
        )
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
    from nodecheck.run.act import backend_for, resume_if_ours
    from nodecheck.run.config import load_config
    from nodecheck.run.config_file import ConfigError
    from nodecheck.run.pipeline import RunRequest, execute, node_name
    from nodecheck.slurm import SlurmError, set_call_deadline
    from nodecheck.store import history

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
    # The reason nodecheck set, where this host keeps the node's state (on the node itself,
    # or a shared state_dir); elsewhere only a reason that is whole nodecheck's counts.
    kept = history.read_only_history(config.state_dir_for(node), history.drain_reason)
    try:
        result = resume_if_ours(backend_for(config, os.environ), node, kept)
    except SlurmError as exc:
        print(f"nodecheck: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    print(f"{node}: {result}")
    return EXIT_FAIL if result.startswith("refused") else EXIT_OK
