#!/usr/bin/env python3
"""What a wave of failing nodes costs slurmctld at N = 1,000 and N = 10,000: figures only.

For each N: a real slurmctld with slurmdbd (and MariaDB) configured with N nodes, of which
a few run a real `slurmd -N` on loopback and the rest are configured but never started
(tools/testcluster.py --configured-nodes); `Licenses=nodecheck_breaker:1000` declared (every
test cluster does, as slurm.conf.example says). Then nodecheck's real health run (the
HealthCheckProgram wrapper, as slurmd starts it: only SLURMD_NODENAME in its environment,
each node its own state directory) fails host.mounts for FAILING node names spread over the
cluster, PARALLEL at a time, with the breaker at its defaults but for a window of
WINDOW_MIN minutes (the whole wave in one window). Printed per N:

* controller RPCs per failing node: slurmctld's own count (`sdiag`, by message type, reset
  right before the wave; the RPCs of the squeue calls made during the wave taken out, by
  what one squeue asks when idle) and the backend's own count of the commands it ran and
  the bytes they read;
* the time until the wave is fully decided (the last run's end);
* drains made against the breaker's limit, and drain -> resume flaps (slurmdbd's drain
  events of the failing nodes that ended during the wave, and runs that resumed);
* a user's `squeue` latency during the wave against idle (median and max).

Run as root where `make install` has put Slurm, slurmdbd and MariaDB:
    bench/scale.py [--sizes 1000,10000] [--failing 500] [--parallel 16]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench.common, when run as bench/scale.py

from bench.common import Sdiag, load_testcluster, machine_line, parse_sdiag  # noqa: E402

HEALTH = REPO / "health" / "nodecheck-health"
STARTED = 4  # real slurmd nodes; the rest are configured only
WINDOW_MIN = 60
# What nodecheck's runs ask of slurmctld (sdiag's message types); anything else root sent
# during the wave (the 4 slurmd's own messages, sdiag itself) is not theirs.
NODECHECK_RPCS = {
    "REQUEST_NODE_INFO",
    "REQUEST_NODE_INFO_SINGLE",
    "REQUEST_PARTITION_INFO",
    "REQUEST_RESERVATION_INFO",
    "REQUEST_CREATE_RESERVATION",
    "REQUEST_DELETE_RESERVATION",
    "REQUEST_UPDATE_NODE",
    "REQUEST_BUILD_INFO",
}


def config(work: Path) -> str:
    return f"""
log_file = "{work}/nodecheck.log"
state_dir = "{work}/state/{{node}}"
metrics_file = "{work}/metrics/{{node}}.prom"
killswitch_file = "{work}/disabled"
slurm_backend = "scontrol"
budget_s = 60
# The whole wave inside one window (500 runs took ~12 min on a loaded 2-core VM), so the
# drains it makes compare with the limit directly; the other limits at their defaults.
breaker_window_min = {WINDOW_MIN}
[checks."host.mounts"]
required = ["/nodecheck-bench-missing-mount"]
[checks."host.disk"]
min_free_gib = {{ "/tmp" = 0.01 }}
"""


def sdiag(cluster) -> Sdiag:
    """slurmctld's RPC counts since the last `sdiag -r`, by type and user, and its DBD queue."""
    return parse_sdiag(cluster.run(["sdiag"], timeout=60).stdout)


def squeue_once(cluster) -> float:
    """A user's squeue, wall-clock seconds. Run as root: the test cluster's slurm.conf and
    munge socket sit in its root-only state dir (another user's squeue waits 60 s for a
    config it cannot read); its RPCs are taken out of nodecheck's count by type."""
    start = time.monotonic()
    subprocess.run(
        ["squeue"],
        env={"PATH": "/usr/bin:/bin", "SLURM_CONF": str(cluster.conf_path)},
        capture_output=True,
        timeout=120,
        check=False,
    )
    return time.monotonic() - start


def spread(total: int, count: int) -> list[str]:
    """`count` never-started node names spread evenly over n<STARTED+1>..n<total>."""
    span = total - STARTED
    return [f"n{STARTED + 1 + (i * span) // count}" for i in range(count)]


def log_events(work: Path, name: str) -> list[dict]:
    log = work / "nodecheck.log"
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and f'"event": "{name}"' in line:
            out.append(json.loads(line))
    return out


def one_size(tc, total: int, failing: int, parallel: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"nc-scale-{total}-", dir="/tmp"))
    work.chmod(0o755)
    cluster = tc.TestCluster(
        state_dir=work / "c",
        nodes=STARTED,
        configured_nodes=total,
        health_program=HEALTH,
        nodecheck_config_text=config(work),
        accounting=True,
        start_timeout=600,
    )
    t0 = time.monotonic()
    cluster.start()
    up_s = time.monotonic() - t0
    try:
        # slurmctld registers every node with slurmdbd at start; the wave waits for that
        # queue to empty, as it would be on a cluster that has been up a while.
        t1 = time.monotonic()
        while sdiag(cluster).dbd_queue > 0:
            if time.monotonic() - t1 > 1800:
                raise RuntimeError("slurmdbd's queue did not empty within 30 min")
            time.sleep(5)
        dbd_s = time.monotonic() - t1
        names = spread(total, failing)
        cluster.run(["sdiag", "-r"])
        idle = [squeue_once(cluster) for _ in range(15)]
        # What one user's squeue asks, by type: taken out of the wave's count below.
        idle_rpcs = sdiag(cluster)
        idle_counts, idle_ave = idle_rpcs.by_type, idle_rpcs.ave_us
        squeue_types = {t: c / len(idle) for t, c in idle_counts.items() if t in NODECHECK_RPCS}
        cluster.run(["sdiag", "-r"])
        wave_start_wall = time.time()
        during: list[float] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                during.append(squeue_once(cluster))
                time.sleep(0.2)

        watcher = threading.Thread(target=watch)
        watcher.start()
        start = time.monotonic()

        tails: dict[str, str] = {}

        def run(name: str) -> int:
            proc = subprocess.run(
                [str(cluster.health_wrapper)],
                env={"SLURMD_NODENAME": name},
                cwd="/",
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            tails[name] = proc.stderr[-600:]
            return proc.returncode

        with ThreadPoolExecutor(parallel) as pool:
            codes = list(pool.map(run, names))
        decided_s = time.monotonic() - start
        done.set()
        watcher.join()
        wave_rpcs = sdiag(cluster)
        by_type, wave_ave = wave_rpcs.by_type, wave_rpcs.ave_us
        # The user's squeue calls during the wave, taken out by what one call asks.
        for kind, per_call in squeue_types.items():
            by_type[kind] = max(0, by_type.get(kind, 0) - round(per_call * len(during)))
        ours = sum(c for t, c in by_type.items() if t in NODECHECK_RPCS)
        verdicts = {e["node"]: e for e in log_events(work, "verdict") if e.get("node") in names}
        actions = collections.Counter(v.get("action", "?") for v in verdicts.values())
        cost = log_events(work, "slurm_cost")
        counted = log_events(work, "breaker_drains_counted")
        drained = [n for n in names if cluster.node_state(n)[1].startswith("nodecheck:")]
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(wave_start_wall - 1))
        events = cluster.run(
            [
                "sacctmgr",
                "-n",
                "-P",
                "show",
                "event",
                "Event=Node",
                "States=DRAIN",
                f"Start={since}",
                "format=NodeName,Start,End",
            ],
            timeout=120,
        ).stdout
        ended = [
            line
            for line in events.splitlines()
            if line.split("|")[0] in set(names) and not line.endswith("|Unknown")
        ]
        silent = [n for n in names if n not in verdicts]
        limits_max_drains, share, floor = 20, 0.10, 3
        limit = min(limits_max_drains, max(floor, math.floor(share * total)))
        return {
            "total": total,
            "failing": failing,
            "up_s": up_s,
            "dbd_s": dbd_s,
            "decided_s": decided_s,
            "rpcs": ours,
            "rpc_types": {t: c for t, c in sorted(by_type.items()) if t in NODECHECK_RPCS},
            "backend_calls": sum(e.get("calls", 0) for e in cost),
            "backend_bytes": sum(e.get("bytes_read", 0) for e in cost),
            "dbd_reads": len(counted),
            "dbd_bytes": sum(e.get("bytes_read", 0) for e in counted),
            "runs_logged": len(cost),
            "drained": len(drained),
            "limit": limit,
            "flaps": len(ended) + actions.get("resumed", 0),
            "actions": dict(actions),
            "exit_codes": dict(collections.Counter(codes)),
            "no_verdict": [(n, tails.get(n, "")) for n in silent],
            "squeue_idle": idle,
            # slurmctld's own time answering squeue (REQUEST_JOB_INFO, mean us)
            "job_info_us": (
                idle_ave.get("REQUEST_JOB_INFO", 0),
                wave_ave.get("REQUEST_JOB_INFO", 0),
            ),
            "rpc_us": {t: wave_ave.get(t, 0) for t in by_type if t in NODECHECK_RPCS},
            "squeue_wave": during,
        }
    finally:
        cluster.stop(timeout=60)


def report(r: dict) -> None:
    per = r["failing"]
    idle_med, wave_med = statistics.median(r["squeue_idle"]), statistics.median(r["squeue_wave"])
    print(
        f"\n[N = {r['total']:,} nodes: {STARTED} slurmd, the rest configured only; "
        f"{r['failing']} failing, health phase]"
    )
    print(
        f"  cluster up in {r['up_s']:.0f} s; slurmdbd's node registrations flushed in "
        f"{r['dbd_s']:.0f} s (before the wave)"
    )
    print(
        f"  controller RPCs (sdiag): {r['rpcs']} = {r['rpcs'] / per:.2f} per failing node  "
        f"{r['rpc_types']}"
    )
    print(
        f"  backend's own count: {r['backend_calls']} commands "
        f"({r['backend_calls'] / per:.2f} per node), {r['backend_bytes']:,} bytes read "
        f"({r['backend_bytes'] / per:,.0f} per node); runs that logged it: {r['runs_logged']}"
    )
    print(f"  slurmdbd reads (sacctmgr, not slurmctld): {r['dbd_reads']}, {r['dbd_bytes']:,} bytes")
    print(f"  wave fully decided in {r['decided_s']:.1f} s")
    print(
        f"  drains: {r['drained']} (breaker limit {r['limit']} per {WINDOW_MIN} min); "
        f"flaps drain -> resume: {r['flaps']}; actions {r['actions']}; exit codes {r['exit_codes']}"
    )
    if r["no_verdict"]:
        name, tail = r["no_verdict"][0]
        print(
            f"  runs that logged no verdict: {len(r['no_verdict'])}; the first ({name}) "
            f"ended with: {tail.strip()[-300:]!r}"
        )
    print(
        f"  squeue as a user: idle median {idle_med * 1000:.0f} ms (max "
        f"{max(r['squeue_idle']) * 1000:.0f}), during the wave median {wave_med * 1000:.0f} ms "
        f"(max {max(r['squeue_wave']) * 1000:.0f}, {len(r['squeue_wave'])} calls): "
        f"{wave_med / idle_med:.2f}x idle"
    )
    idle_us, wave_us = r["job_info_us"]
    print(
        f"  slurmctld's own time per squeue (REQUEST_JOB_INFO, sdiag mean): idle {idle_us} us, "
        f"during the wave {wave_us} us; nodecheck's RPCs, mean us: {r['rpc_us']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--failing", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=16)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("scale: needs root (the test cluster runs its daemons as root)")
        return 0
    tc = load_testcluster()
    print("nodecheck at cluster scale (figures only, never pass/fail)")
    print(machine_line(slurm=True))
    results = []
    for total in (int(s) for s in args.sizes.split(",")):
        r = one_size(tc, total, args.failing, args.parallel)
        report(r)
        results.append(r)
        sys.stdout.flush()
    if len(results) > 1:
        a, b = results[0], results[-1]
        if a["rpcs"] and a["backend_bytes"]:
            print(
                f"\nN = {b['total']:,} against N = {a['total']:,}: RPCs per failing node "
                f"{b['rpcs'] / a['rpcs']:.2f}x, bytes read per failing node "
                f"{b['backend_bytes'] / a['backend_bytes']:.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
