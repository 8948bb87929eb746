"""`nodecheck list` and `nodecheck explain`: the check catalogue, for people and scripts."""

from __future__ import annotations

import argparse
import json
import os
import sys

from nodecheck.core.codes import EXIT_INTERNAL, EXIT_OK, PHASES


def list_checks(args: argparse.Namespace) -> int:
    """`nodecheck list`: every check, where it runs and whether it is on for this node."""
    from nodecheck.checks.registry import all_checks
    from nodecheck.run.config import load_config
    from nodecheck.run.config_file import ConfigError
    from nodecheck.run.pipeline import node_name

    registry = all_checks()
    node = node_name(args.node, os.environ)
    try:
        nodecfg = load_config(args.config, os.environ, registry).for_node(node, registry)
    except ConfigError as exc:
        print(f"nodecheck: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    rows = [
        {
            "id": cid,
            "enabled": nodecfg.checks[cid].enabled,
            "phases": sorted(nodecfg.checks[cid].phases, key=PHASES.index),
            "timeout_s": nodecfg.checks[cid].timeout_s,
            "tier": chk.tier,
            "summary": chk.summary,
        }
        for cid, chk in registry.items()
    ]
    if args.json:
        print(
            json.dumps({"node": node, "node_class": nodecfg.node_class, "checks": rows}, indent=2)
        )
        return EXIT_OK
    from nodecheck.entry.tables import show, table

    cells = [
        (
            row["id"],
            row["tier"],
            "on" if row["enabled"] else "off",
            ",".join(row["phases"]),
            f"{row['timeout_s']:g}s",
            row["summary"],
        )
        for row in rows
    ]
    show(
        [
            f"checks for node {node} (class {nodecfg.node_class}):",
            table(("CHECK", "TIER", "ENABLED", "PHASES", "TIMEOUT", "SUMMARY"), cells),
            "deep checks run with `nodecheck run --tier deep`",
        ]
    )
    return EXIT_OK


def explain(args: argparse.Namespace) -> int:
    """`nodecheck explain ID|GLOB`: what each matching check reads and what to do."""
    import fnmatch
    import inspect

    from nodecheck.checks.registry import all_checks

    registry = all_checks()
    wanted = [cid for cid in registry if fnmatch.fnmatchcase(cid, args.check_id)]
    if not wanted:
        print(
            f"nodecheck: no check matches {args.check_id!r} (see `nodecheck list`)", file=sys.stderr
        )
        return EXIT_INTERNAL
    blocks = []
    for cid in wanted:
        chk = registry[cid]
        lines = [
            f"{chk.id}: {chk.summary}",
            f"tier {chk.tier}; runs in: {', '.join(sorted(chk.phases, key=PHASES.index))}; "
            f"timeout {chk.timeout_s}s; {'on' if chk.enabled_by_default else 'off'} by default",
        ]
        if chk.explain:
            lines += ["", inspect.cleandoc(chk.explain)]
        if chk.options:
            lines += ["", f'options ([checks."{chk.id}"] or per node class):']
            lines += [
                f"  {name} = {json.dumps(opt.default)}  # {opt.help}"
                for name, opt in chk.options.items()
            ]
        if chk.new_signals:  # run/report_only.py
            lines += ["", "new signals, report-only until the site sets report_only:"]
            lines += [f"  {name}: {where}" for name, where in chk.new_signals.items()]
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    return EXIT_OK
