"""`nodecheck selftest [--json] [--check PATTERN] [--via auto|agent|inprocess|both]`; its
arguments are defined with the others, in nodecheck.entry.cli."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from nodecheck.core.codes import EXIT_INTERNAL
from nodecheck.selftest import agent_running, agent_socket, run_selftest

MAX_TIMEOUT_S = 3600.0


def selftest_command(args: argparse.Namespace) -> int:
    from nodecheck.run.config_file import ConfigError
    from nodecheck.run.pipeline import UsageError
    from nodecheck.selftest.report import dumps, lines

    if not 0 < args.timeout <= MAX_TIMEOUT_S:
        print(f"nodecheck: --timeout must be in (0, {MAX_TIMEOUT_S:g}]", file=sys.stderr)
        return EXIT_INTERNAL
    env = dict(os.environ)
    socket = agent_socket(env, args.socket)
    via, notes = ("inprocess", "agent"), ()
    if args.via in ("inprocess", "agent"):
        via = (args.via,)
    elif args.via == "auto" and not agent_running(socket):
        via, notes = ("inprocess",), (f"no agent socket at {socket}: in-process only",)
    try:
        report = run_selftest(
            args.config,
            env,
            tuple(args.check),
            via,
            socket,
            args.timeout,
            record=not args.check,
            agent_optional=args.via == "auto",
            muted=not args.verbose,
        )
    except (ConfigError, UsageError) as exc:
        print(f"nodecheck: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    report = replace(report, notes=(*notes, *report.notes))
    if args.json:
        print(dumps(report))
    else:
        from nodecheck.entry.tables import show

        show(lines(report))
    return report.exit_code
