#!/usr/bin/env python3
"""fabric.preflight's added job-start time for 2, 4 and 8 network-namespace hosts.

Each round builds tests/netns/lab.py's hosts (veth links through a bridge in a switch
namespace), starts the real check on every host at the same moment (as slurmd starts the
prologs of an allocation with PrologFlags=Alloc) and takes each host's check time: from the
check function's start to its verdict, imports of the probe modules included. The job
starts when the slowest prolog ends (DeferBatch), so the figure that counts is the slowest
host's; the median host is printed beside it, and the coordinator's time from the last
join to the verdict (the protocol itself, without the skew of the hosts' starts). A second
set of rounds limits one host's fabric link with `tbf` (8 Mbit/s): the path where the
second pass runs and that host FAILs.

Figures, never pass/fail. Needs root and iproute2 (network namespaces); says so otherwise.
Usage: bench/preflight.py [--rounds N] [--sizes 2,4,8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "netns"))

from lab import SKIP, Lab  # noqa: E402

SCRIPT = REPO / "tests" / "netns" / "preflight_host.py"


def one_round(hosts: int, key: Path, slow: bool) -> tuple[list[float], float]:
    """Each host's check time, and the coordinator's time from everyone joined to verdict."""
    net = Lab(hosts).build()
    try:
        if slow:
            net.limit(f"h{hosts}", "8mbit")
        opts = {"address_template": "10.201.0.{num}", "key_file": str(key)}
        names = list(net.hosts)
        got = net.run_script(
            names,
            SCRIPT,
            lambda h: json.dumps({"node": h, "nodelist": f"h[1-{hosts}]", "options": opts}),
            60,
        )
    finally:
        net.destroy()
    statuses = {h: out["results"][0]["status"] for h, out in got.items()}
    messages = {h: out["results"][0]["message"] for h, out in got.items()}
    want = {h: ("FAIL" if slow and h == f"h{hosts}" and hosts > 2 else None) for h in names}
    for host, status in statuses.items():
        expected = want[host] or ("WARN" if slow and hosts == 2 else "PASS")
        if status != expected:
            print(
                f"  note: {host} {status} (expected {expected}): {messages[host]}", file=sys.stderr
            )
    coordinator = got["h1"]["results"][0]["values"]
    return [out["took_s"] for out in got.values()], coordinator["elapsed_s"] - coordinator[
        "joined_s"
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="2,4,8")
    args = parser.parse_args()
    if SKIP:
        print(f"fabric.preflight bench skipped: {SKIP}")
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        os.write(fd, os.urandom(64))
        os.close(fd)
        print(
            f"fabric.preflight, check time per host (ms), median of {args.rounds} rounds; "
            "defaults (8 MiB per direction per pair, transfer_s 0.25)"
        )
        print(
            f"  {'hosts':>5}  {'case':<22} {'slowest host':>12} {'median host':>12} "
            f"{'measuring':>10}"
        )
        for slow in (False, True):
            for hosts in sizes:
                worst, middle, measuring = [], [], []
                for _ in range(args.rounds):
                    took, measured = one_round(hosts, key, slow)
                    worst.append(max(took))
                    middle.append(statistics.median(took))
                    measuring.append(measured)
                case = "healthy" if not slow else "one host at 8 Mbit/s"
                print(
                    f"  {hosts:>5}  {case:<22} {statistics.median(worst) * 1000:>12.0f} "
                    f"{statistics.median(middle) * 1000:>12.0f} "
                    f"{statistics.median(measuring) * 1000:>10.0f}"
                )
        print(
            "  measuring: the coordinator's time from the last join to the verdict (the rest "
            "is the hosts' starts, skewed here by 2 CPUs shared by every host)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
