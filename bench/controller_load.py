#!/usr/bin/env python3
"""Controller load when every node fails at once: figures, never pass/fail.

Starts a throw-away Slurm (tools/testcluster.py) with N `slurmd -N` nodes running the
project's real prolog/epilog, configures every node to fail host.mounts (a required mount
that is missing everywhere: a bad config push), submits one job pinned to each node at
once, and measures
* the time from the first submission until every node is drained,
* how many controller calls nodecheck made (a recording scontrol wrapper, configured as
  `scontrol = ...`), by kind and per node,
* how many drains carry nodecheck's reason and how many are Slurm's own "Prolog error"
  (with the breaker at its defaults it fails open: that figure is to stay at 0), and how
  many failing nodes the breaker held back while their jobs ran.

Run as root where tools/install-system-deps.sh has installed Slurm:
    bench/controller_load.py [--nodes 32] [--breaker off|default|both]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench.common, when run as bench/controller_load.py

from bench.common import load_testcluster, machine_line  # noqa: E402

PROLOG = REPO / "prolog" / "nodecheck-prolog"
EPILOG = REPO / "epilog" / "nodecheck-epilog"


def recorder(work: Path) -> tuple[Path, Path]:
    calls = work / "scontrol-calls"
    script = work / "scontrol-recorder"
    script.write_text(
        f'#!/bin/sh\necho "$(/usr/bin/date +%s.%N) $*" >> {calls}\nexec /usr/bin/scontrol "$@"\n'
    )
    script.chmod(0o755)
    return script, calls


def config(work: Path, scontrol: Path, breaker: bool) -> str:
    limits = "" if breaker else "breaker_max_share = 0\nbreaker_max_drains = 0\n"
    return f"""
log_file = "{work}/nodecheck.log"
state_dir = "{work}/state/{{node}}"
metrics_file = ""
killswitch_file = "{work}/disabled"
scontrol = "{scontrol}"
slurm_backend = "scontrol"
budget_s = 30
{limits}
[checks."host.mounts"]
required = ["/nodecheck-bench-missing-mount"]
[checks."host.disk"]
min_free_gib = {{ "/tmp" = 0.01 }}
"""


def prolog_verdicts(work: Path) -> dict[str, dict]:
    """Each node's latest prolog verdict line from nodecheck's log."""
    log = work / "nodecheck.log"
    out: dict[str, dict] = {}
    if not log.exists():
        return out
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"event": "verdict"' in line:
            event = json.loads(line)
            if event.get("phase") == "prolog":
                out[str(event.get("node"))] = event
    return out


def scenario(tc, nodes: int, breaker: bool, timeout: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="nodecheck-load-"))
    work.chmod(0o755)
    scontrol, calls = recorder(work)
    for attempt in (1, 2):  # a loaded 2-core box sometimes loses a daemon at start
        cluster = tc.TestCluster(
            state_dir=work / f"slurm{attempt}",
            nodes=nodes,
            prolog=PROLOG,
            epilog=EPILOG,
            nodecheck_config_text=config(work, scontrol, breaker),
            start_timeout=120,
        )
        try:
            cluster.start()
            break
        except tc.ClusterError as exc:
            if attempt == 2:
                raise
            print(f"  (cluster start failed, retrying once: {str(exc).splitlines()[0]})")
    try:
        names = cluster.node_names
        started = time.monotonic()
        for name in names:
            cluster.sbatch("-w", name, "--wrap", "true")
        submitted = time.monotonic() - started
        drained_at: dict[str, float] = {}
        deadline = started + timeout
        # Done when every node's prolog has given its verdict (with the breaker open most
        # nodes fail open and are never drained) and nothing new has drained for a while:
        # Slurm's own "Prolog error" drain lands a moment after the prolog exits.
        settled_at = None
        while time.monotonic() < deadline:
            for name, state in cluster.node_states().items():
                if state.startswith("drain") and name not in drained_at:
                    drained_at[name] = time.monotonic() - started
                    settled_at = None
            if len(prolog_verdicts(work)) >= len(names):
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at > 3.0:
                    break
            time.sleep(0.2)
        reasons = {name: cluster.node_state(name)[1] for name in names}
        verdicts = prolog_verdicts(work)
        lines = calls.read_text().splitlines() if calls.exists() else []
        # `scontrol --help` (the backend asking whether --json is there) reaches no daemon.
        lines = [line for line in lines if line.split()[1:] != ["--help"]]
        kinds: collections.Counter[str] = collections.Counter()
        per_node: collections.Counter[str] = collections.Counter()
        for line in lines:
            _, *args = line.split()
            if args[:2] == ["show", "node"]:
                kind, node = ("show node", args[2]) if len(args) > 2 else ("show node (all)", "")
            elif args[:1] == ["update"]:
                node = args[1].partition("=")[2]
                kind = "update " + " ".join(a for a in args[2:3])
            else:
                kind, node = " ".join(args[:2]), ""
            kinds[kind] += 1
            if node:
                per_node[node] += 1
        return {
            "nodes": nodes,
            "breaker": breaker,
            "submit_s": submitted,
            "drained": len(drained_at),
            "all_drained_s": max(drained_at.values()) if len(drained_at) == len(names) else None,
            "median_drained_s": statistics.median(drained_at.values()) if drained_at else None,
            "last_drained_s": max(drained_at.values()) if drained_at else None,
            "calls": len(lines),
            "kinds": dict(kinds),
            "per_node": sorted(per_node.values()),
            "ours": sum(r.startswith("nodecheck:") for r in reasons.values()),
            "slurm_own": sum(bool(r) and not r.startswith("nodecheck:") for r in reasons.values()),
            "not_drained": sum(not r for r in reasons.values()),
            "ran": sum(1 for v in verdicts.values() if v.get("exit_code") == 0),
            "examples": sorted(set(r.split(" [")[0] for r in reasons.values()))[:3],
        }
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=32, help="slurmd nodes (default 32)")
    parser.add_argument("--breaker", choices=("off", "default", "both"), default="both")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("controller_load: needs root (the test cluster runs its daemons as root)")
        return 0
    tc = load_testcluster()
    modes = {"off": [False], "default": [True], "both": [False, True]}[args.breaker]
    print("nodecheck controller load (figures only)")
    print(machine_line(slurm=True))
    print(
        f"scenario: {args.nodes} slurmd nodes on loopback, every node fails host.mounts, "
        "one job pinned to each node, all submitted at once"
    )
    for breaker in modes:
        r = scenario(tc, args.nodes, breaker, args.timeout)
        label = "breaker at its defaults" if breaker else "breaker off"
        print()
        print(f"[{label}]")
        print(f"  submitting {r['nodes']} jobs took {r['submit_s']:.2f} s")
        if r["all_drained_s"] is not None:
            print(
                f"  all {r['nodes']} nodes drained {r['all_drained_s']:.1f} s after the first "
                f"submission (median node {r['median_drained_s']:.1f} s)"
            )
        elif r["drained"]:
            print(
                f"  {r['drained']} of {r['nodes']} nodes drained, the last "
                f"{r['last_drained_s']:.1f} s after the first submission"
            )
        else:
            print(f"  none of the {r['nodes']} nodes drained")
        print(
            f"  drain reasons: {r['ours']} nodecheck's own, {r['slurm_own']} Slurm's "
            f"(e.g. {r['examples']})"
        )
        print(f"  nodes Slurm drained by itself (Prolog error): {r['slurm_own']} (keep at 0)")
        print(
            f"  not drained: {r['not_drained']} (held back by the breaker); "
            f"prologs that let their job run (exit 0): {r['ran']}"
        )
        per = r["per_node"]
        print(
            f"  controller calls by nodecheck: {r['calls']} in all, "
            f"{r['calls'] / r['nodes']:.2f} per failing node "
            f"(per node min {per[0] if per else 0}, max {per[-1] if per else 0})"
        )
        for kind, count in sorted(r["kinds"].items()):
            print(f"    {kind:<22} {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
