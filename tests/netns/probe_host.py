"""Run fabric.peers as one test host would, inside its network namespace; print JSON.

Usage: python tests/netns/probe_host.py '{"node": "h1", "nodelist": "h[1-4]", "options": {...}}'
"""

from __future__ import annotations

import json
import sys
import time

from nodecheck.checks.context import CheckContext, JobInfo, NodeSettings
from nodecheck.checks.fabric import peers as fabric_peers_check
from nodecheck.checks.registry import all_checks


def main() -> None:
    args = json.loads(sys.argv[1])
    check = all_checks()["fabric.peers"]
    options = {name: opt.default for name, opt in check.options.items()}
    options.update(args.get("options", {}))
    ctx = CheckContext(
        phase="prolog",
        node=args["node"],
        node_class="netns-test",
        job=JobInfo(job_id=args.get("job", "4242"), nodelist=args["nodelist"]),
        settings=NodeSettings(),
        options=options,
    )
    started = time.monotonic()
    results = [r.as_dict() for r in fabric_peers_check.fabric_peers(ctx)]
    print(json.dumps({"results": results, "took_s": time.monotonic() - started}))


if __name__ == "__main__":
    main()
