"""`nodecheck hook PHASE`: what the prolog/epilog/health entrypoints run under slurmd.

It logs to the configured targets (`log_target`: stderr, which slurmd keeps when the hook
exits non-zero, and `log_file` by default), acts on the verdict through Slurm, and exits
with a code Slurm understands. The command line itself is parsed by nodecheck.entry.cli,
the one definition of it; the node service (nodecheck.entry.agent) calls `run_hook`
directly.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodecheck.core.codes import DEFAULT_BUDGET_S, EXIT_OK

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nodecheck.run.config import Config
    from nodecheck.run.config_file import ConfigRead


@dataclass(frozen=True)
class HookArgs:
    phase: str
    config: str | None = None
    dry_run: bool = False
    verbose: bool = False


def run_hook(args: HookArgs, hook_pid: int | None = None) -> int:
    """One hook run; `hook_pid` is the process Slurm started when that is not this one. The
    run itself happens in a child kept by this process (nodecheck.run.keeper), so that a
    filesystem that stops answering during the run cannot hold slurmd."""
    from nodecheck.run.keeper import keep

    # The run's budget counts from here, its first look included; a client that handed the
    # run to the agent first and fell back counts from its own start (hook_started).
    started = hook_started(os.environ, time.monotonic())
    pid = hook_pid or os.getpid()
    return keep(lambda: _run(args, pid, started), started + DEFAULT_BUDGET_S)


# CLOCK_MONOTONIC (system-wide) when the agent's client started: a client whose agent
# could not serve, or died mid-run, becomes the in-process run with what is left of the
# budget Slurm gave the hook, not a new one (entry/agent_client.py, agent_client.c).
STARTED_ENV = "NODECHECK_HOOK_STARTED"


def hook_started(env: Mapping[str, str], now: float) -> float:
    """The start of this hook's budget: `now`, or the client's start when it says one that
    is sane (not in the future, not older than the longest budget)."""
    try:
        said = float(env.get(STARTED_ENV, ""))
    except ValueError:
        return now
    return said if now - DEFAULT_BUDGET_S * 3 <= said <= now else now


def _run(args: HookArgs, hook_pid: int, started: float) -> int:
    from nodecheck.checks.context import JobInfo
    from nodecheck.checks.registry import all_checks
    from nodecheck.log import get_logger, setup_logging
    from nodecheck.run import keeper
    from nodecheck.run.firstlook import first_look
    from nodecheck.run.pipeline import RunRequest, UsageError, execute, node_name

    env = dict(os.environ)
    try:
        node: str | None = node_name(None, env)
    except UsageError:
        node = None  # refused by the run below, with the reason
    look = first_look(args.config, env, node)
    # Logging is needed before the config is validated: take its settings from what is
    # valid, so a broken config is still reported where the site looks.
    salvaged = look.settings
    config = _valid_config(args.config, env, look.config)
    if node is not None and not look.config.error:
        # What the keeper needs to act should the run stick: the node's own budget (a node
        # class may set it) and the config, before anything touches the log file.
        acting = config or salvaged
        budget_s = config.for_node(node, all_checks()).budget_s if config else salvaged.budget_s
        job = JobInfo.from_env(env).job_id
        keeper.report("acting", node, job, args.phase, acting, started + float(budget_s))
    log_file = None if look.log_dir_problem else salvaged.log_file or None
    keeper.report("step", f"opening the log file {log_file}")
    problem = setup_logging(
        log_file,
        to_stderr=True,
        verbose=args.verbose,
        targets=salvaged.log_target,
    )
    # A log file whose filesystem does not answer would hold the hook in the kernel,
    # unkillable, at its first line: such a run logs to stderr only.
    problem = "; ".join(filter(None, (look.log_dir_problem, problem)))
    if problem:
        get_logger().warning("log_file_unusable", problem=problem)
    _say_why_not_the_agent(env, args.phase, started, node, JobInfo.from_env(env).job_id)
    try:
        out = execute(
            RunRequest(
                phase=args.phase,
                env=env,
                config_path=args.config,
                act=True,
                dry_run=args.dry_run,
                hook_pid=hook_pid,
                config_read=look.config,
                config=config,
                started=started,
            )
        )
    except UsageError as exc:  # e.g. a refused SLURMD_NODENAME: one clear line, no traceback
        get_logger().error("refused", error=str(exc))
        return EXIT_OK
    except Exception as exc:  # last line of defence: never an anonymous drain for our bug
        get_logger().exception("internal_error", error=f"{type(exc).__name__}: {exc}")
        return EXIT_OK
    if out.action_taken == "disabled" and args.phase == "health":
        _metrics_while_disabled(salvaged, out.node)
    return out.verdict.exit_code


def _say_why_not_the_agent(
    env: Mapping[str, str], phase: str, started: float, node: str | None, job: str | None
) -> None:
    """A client that could not hand this run to the agent says why (agent_client); it is
    logged like every other line of the run, with how much of the hook's budget the try
    took (`spent_s`: the run goes on with the rest). Only a log line: nothing else reads
    it."""
    from nodecheck.entry.agent_client import DEFAULT_SOCKET, UNAVAILABLE_ENV
    from nodecheck.log import get_logger

    why = env.get(UNAVAILABLE_ENV)
    if why:
        socket = env.get("NODECHECK_AGENT_SOCKET") or DEFAULT_SOCKET
        get_logger().warning(
            "agent_unavailable",
            socket=socket,
            node=node,
            job=int(job) if job else None,
            phase=phase,
            error=why,
            fallback="in-process",
            spent_s=round(time.monotonic() - started, 3),
        )


def _valid_config(explicit: str | None, env: Mapping[str, str], read: ConfigRead) -> Config | None:
    """The validated config, or None when it has a problem (the run reports it)."""
    from nodecheck.checks.registry import all_checks
    from nodecheck.run.config import load_config
    from nodecheck.run.config_file import ConfigError

    try:
        return load_config(explicit, env, all_checks(), read)
    except (ConfigError, ImportError, OSError):
        return None


def _metrics_while_disabled(config: Config, node: str) -> None:
    from nodecheck.checks.registry import all_checks
    from nodecheck.log import get_logger
    from nodecheck.store import recording

    try:
        recording.rewrite_while_disabled(config, node, all_checks)
    except Exception as exc:  # the killswitch's no-op must stay a no-op
        get_logger().warning("metrics_not_written", error=f"{type(exc).__name__}: {exc}")
