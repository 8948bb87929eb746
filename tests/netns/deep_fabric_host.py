"""Run the deep.fabric check as one test host would, inside its network namespace.

Usage: python tests/netns/deep_fabric_host.py '{"node": "h1", "nodelist": "h[1-4]", ...}'
Prints the check's results as JSON. The check (`nodecheck.checks.deep.fabric.deep_fabric`)
does what it does on a node of a job: expands the job's node list, joins torch.distributed
with gloo on the fabric interface, measures, judges.
"""

from __future__ import annotations

import json
import sys
import time

from nodecheck.checks.context import CheckContext, JobInfo, NodeSettings
from nodecheck.checks.deep import fabric
from nodecheck.checks.registry import all_checks


def main() -> None:
    args = json.loads(sys.argv[1])
    declared = all_checks()["deep.fabric"].options
    options = {name: opt.default for name, opt in declared.items()}
    options.update(args.get("options", {}))
    ctx = CheckContext(
        phase="manual",
        node=args["node"],
        node_class="netns-test",
        job=JobInfo(job_id=args.get("job", "4242"), nodelist=args["nodelist"]),
        settings=NodeSettings(),
        options=options,
    )
    started = time.monotonic()
    results = [r.as_dict() for r in fabric.deep_fabric(ctx)]
    print(json.dumps({"results": results, "took_s": time.monotonic() - started}))


if __name__ == "__main__":
    main()
