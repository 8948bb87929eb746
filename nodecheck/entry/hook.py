"""`nodecheck hook PHASE`: what the prolog/epilog/health entrypoints run under slurmd.

It logs JSON to stderr (kept by slurmd) and the log file, acts on the verdict through
Slurm, and exits with a code Slurm understands. The entrypoints always pass the same few
words, so `hook_args` recognises exactly that shape without argparse, whose import and
parser construction cost ~6 ms at every job start; anything else (a typo, `--help`) goes
to the full argparse parser in `nodecheck.entry.cli`, which stays the one definition of the
command line and of its error messages.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

from nodecheck.run.decide import EXIT_OK

HOOK_PHASES = ("prolog", "epilog", "health")
# How long the log file's directory may take to answer before the run logs to stderr only.
# Spent before the run's budget starts, so it is kept short.
LOG_DIR_TIMEOUT_S = 0.5


class HookArgs(NamedTuple):
    phase: str
    config: str | None = None
    dry_run: bool = False
    verbose: bool = False


def hook_args(argv: Sequence[str]) -> HookArgs | None:
    """`[--config FILE] [-v] hook PHASE [--dry-run]` as HookArgs; None for anything else."""
    words = list(argv)
    config, verbose = None, False
    while words and words[0] != "hook":
        if words[0] == "--config" and len(words) > 1:
            config, words = words[1], words[2:]
        elif words[0].startswith("--config=") and len(words[0]) > len("--config="):
            config, words = words[0].split("=", 1)[1], words[1:]
        elif words[0] in ("-v", "--verbose"):
            verbose, words = True, words[1:]
        else:
            return None
    if len(words) < 2 or words[1] not in HOOK_PHASES:
        return None
    rest = words[2:]
    if rest not in ([], ["--dry-run"]):
        return None
    return HookArgs(words[1], config, bool(rest), verbose)


def run_hook(args: HookArgs, hook_pid: int | None = None) -> int:
    """One hook run; `hook_pid` is the process Slurm started when that is not this one."""
    from nodecheck.log import get_logger, setup_logging
    from nodecheck.run.config import salvage_config
    from nodecheck.run.pipeline import RunRequest, UsageError, execute

    env = dict(os.environ)
    # The log file is needed before the config is validated: take it from what is valid.
    log_file = salvage_config(args.config, env).log_file or None
    hung = _hung_log_dir(log_file)
    problem = setup_logging(None if hung else log_file, to_stderr=True, verbose=args.verbose)
    problem = hung or problem
    if problem:
        get_logger().warning("log_file_unusable", problem=problem)
    try:
        out = execute(
            RunRequest(
                phase=args.phase,
                env=env,
                config_path=args.config,
                act=True,
                dry_run=args.dry_run,
                hook_pid=hook_pid,
            )
        )
    except UsageError as exc:  # e.g. a refused SLURMD_NODENAME: one clear line, no traceback
        get_logger().error("refused", error=str(exc))
        return EXIT_OK
    except Exception as exc:  # last line of defence: never an anonymous drain for our bug
        get_logger().exception("internal_error", error=f"{type(exc).__name__}: {exc}")
        return EXIT_OK
    return out.verdict.exit_code


def _hung_log_dir(log_file: str | None) -> str | None:
    """Why the log file cannot be used when its filesystem does not answer (a write there
    would hold the hook in the kernel, unkillable); None when it answers."""
    if not log_file:
        return None
    from pathlib import Path

    from nodecheck.run.isolate import stat_answers

    directory = Path(log_file).parent
    try:
        if stat_answers(directory, LOG_DIR_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{directory}: cannot check it: {exc}"
    return f"{directory}: no answer within {LOG_DIR_TIMEOUT_S}s (hung filesystem?)"
