"""Run one check as a test host would, inside its network namespace; print its results.

The host scripts (probe_host.py, deep_fabric_host.py) call `run_check` with the JSON
argument the test gave: {"node": "h1", "nodelist": "h[1-4]", "options": {...}}.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable

from nodecheck.checks.context import CheckContext, JobInfo, NodeSettings
from nodecheck.checks.registry import all_checks
from nodecheck.core.results import CheckResult


def run_check(
    check_id: str, func: Callable[[CheckContext], Iterable[CheckResult]], phase: str
) -> None:
    args = json.loads(sys.argv[1])
    declared = all_checks()[check_id].options
    options = {name: opt.default for name, opt in declared.items()}
    options.update(args.get("options", {}))
    ctx = CheckContext(
        phase=phase,
        node=args["node"],
        node_class="netns-test",
        job=JobInfo(job_id=args.get("job", "4242"), nodelist=args["nodelist"]),
        settings=NodeSettings(),
        options=options,
    )
    started = time.monotonic()
    results = [r.as_dict() for r in func(ctx)]
    print(json.dumps({"results": results, "took_s": time.monotonic() - started}))
