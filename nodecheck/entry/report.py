"""`nodecheck report`: the nodes nodecheck drained, cluster-wide, from Slurm's view: the
circuit breaker per partition, the nodes held back, state a node could not save, and the
nodes in the validation reservation.

Where slurmdbd answers, from the cluster's own records (entry/cluster_view.py): slurmdbd's
drain events and reasons, the partitions, the breaker's slots; no node's state directory is
read for the drains. Without slurmdbd, from the node table and, for how often a node was
drained, its history where this host can read it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from nodecheck.core.codes import EXIT_INTERNAL, EXIT_OK


def report(args: argparse.Namespace) -> int:
    """Every node Slurm shows drained by nodecheck (core/node.py: a reason that is,
    whole, one nodecheck writes; an admin's words added to one make it the admin's): check,
    component, since when, and how often it was drained within flap_window_s (from the
    node's history when this host has it, else from a "flapping (drained Nx ...)" reason,
    else unknown)."""
    import re
    import time

    from nodecheck.checks.registry import all_checks
    from nodecheck.core.node import drain_owner
    from nodecheck.core.reason import human_window, is_flapping_message, parse_reason
    from nodecheck.entry.cluster_view import read_cluster
    from nodecheck.run.config import load_config
    from nodecheck.run.config_file import ConfigError
    from nodecheck.slurm import SlurmError
    from nodecheck.store import history

    try:
        config = load_config(args.config, os.environ, all_checks())
        window = float(config.flap_window_s)
        view = read_cluster(config, window, time.time())
    except (ConfigError, SlurmError) as exc:
        print(f"nodecheck: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    nodes = view.nodes
    since = time.time() - window
    rows = []
    for info in sorted(nodes, key=lambda n: n.name):
        if not drain_owner(info, None).ours:  # the controller's view (core/node.py)
            continue
        parsed = parse_reason(info.reason)
        flapping = bool(parsed and is_flapping_message(parsed.message))
        if view.drains_in_window is not None:  # slurmdbd's drain events, cluster-wide
            drains, source = view.drains_in_window.get(info.name, 1), "slurmdbd"
        else:
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
                "window": human_window(window),
                "reason": info.reason,
            }
        )
    breakers, held = _breaker_report(config, nodes)
    slots = _slots_report(config, view)
    held_back = _held_back(config, nodes)
    from pathlib import Path

    from nodecheck.store import unsaved

    state_unsaved = unsaved.report_rows(
        Path(config.state_fallback_dir), [n.name for n in nodes], config.state_dir_for
    )
    validating = _in_validation(config, nodes)
    if args.json:
        doc = {
            "count": len(rows),
            "nodes": rows,
            "breaker": breakers,
            "held_back": held_back,
            "held_by_slurm": held,
            "state_unsaved": state_unsaved,
            "in_validation": validating,
            "breaker_slots": slots,
            "source": view.source,
        }
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    _print_breaker_report(breakers, held)
    _print_slots(slots)
    _print_held_back(held_back)
    _print_in_validation(validating)
    for u in state_unsaved:  # store/unsaved.py: what a run could not write to its state
        print(f"STATE NOT SAVED on {u['node']}: {u.get('error') or u.get('problem')}")
        if u.get("drain_reason"):
            print(f"  its drain, kept in {u['kept_in']}: {u['drain_reason']}")
        if u.get("what_now"):
            print(f"  {u['what_now']}")
    if not rows:
        print("no nodes drained by nodecheck")
        return EXIT_OK
    head = (
        "NODE",
        "STATE",
        "CHECK",
        "COMPONENT",
        "SINCE",
        f"DRAINS/{human_window(window)}",
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
    from nodecheck.run.act import breaker_limits
    from nodecheck.run.breaker import partition_status

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


def _slots_report(config: Any, view: Any) -> dict[str, Any]:
    """The breaker's rate slots in use (run/breaker.py): nodecheck's drains begun within
    the window, against breaker_max_drains. Only where the slots were read (slurmdbd path)."""
    from nodecheck.run.act import breaker_limits
    from nodecheck.run.breaker import Held, rate_slots

    limits = breaker_limits(config)
    held = rate_slots(Held(c.name, c.nodes) for c in view.slots)
    return {
        "read": view.source == "slurmdbd",
        "in_use": len(held),
        "max_drains": limits.max_drains,
        "window_min": limits.window_min,
        "holders": sorted(h.node for h in held),
        "open": limits.max_drains > 0 and len(held) >= limits.max_drains,
    }


def _print_slots(slots: dict[str, Any]) -> None:
    if slots["open"]:
        print(
            f"CIRCUIT BREAKER OPEN cluster-wide: {slots['in_use']} drains by nodecheck in the "
            f"last {slots['window_min']:g} min (limit {slots['max_drains']}); nodecheck stops "
            "draining until the oldest slot ends"
        )


def _held_back(config: Any, nodes: list[Any]) -> list[dict]:
    """Nodes the circuit breaker keeps from a drain: failing, running jobs, since when (from
    each node's history where this host has it)."""
    import time

    from nodecheck.core.plan import HeldBack
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


def _in_validation(config: Any, nodes: list[Any]) -> dict[str, Any]:
    """The nodes in nodecheck's validation reservation, with their state: a node a validate
    run left there (the breaker held its drain, it was rebooting, or the run died) takes no
    user job until someone looks, so the report names it. One read of the reservation;
    without the scontrol backend or the reservation, nothing."""
    from nodecheck.slurm import SlurmError
    from nodecheck.slurm.jobs import SlurmJobs
    from nodecheck.slurm.scontrol import ScontrolBackend

    name = str(config.validate_reservation)
    try:
        cli = ScontrolBackend(config.scontrol, config.slurm_conf or os.environ.get("SLURM_CONF"))
        members = SlurmJobs(cli).reservation_nodes(name)
    except (SlurmError, OSError, ValueError):
        return {"reservation": name, "nodes": []}
    by_name = {n.name: n for n in nodes}
    rows = []
    for node in members:
        info = by_name.get(node)
        rows.append(
            {
                "node": node,
                "state": "+".join(info.states) if info else "?",
                "reason": (info.reason or None) if info else None,
            }
        )
    return {"reservation": name, "nodes": rows}


def _print_in_validation(validating: dict[str, Any]) -> None:
    if not validating["nodes"]:
        return
    print(
        f"IN VALIDATION RESERVATION {validating['reservation']} (no user job runs there; "
        "`nodecheck validate` returns or drains them):"
    )
    for row in validating["nodes"]:
        reason = f" - {row['reason']}" if row["reason"] else ""
        print(f"  {row['node']} {row['state']}{reason}")
