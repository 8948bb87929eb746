"""Checks broken on purpose, for tests/unit/test_selftest.py.

`install` replaces real checks' judgement in the registry of the process that calls it: a
subprocess (the CLI, or an agent and the probe pool it forks), never the test process.
The replacements are module-level functions, so a probe-pool member that is sent the
planned check finds them by name. `launcher` is the argv prefix of such a process.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from nodecheck.checks import registry
from nodecheck.checks.context import CheckContext
from nodecheck.core.results import CheckResult, Status

REPO = Path(__file__).resolve().parents[2]


def remap_never_looks(ctx: CheckContext) -> Iterator[CheckResult]:
    """The classic: a check that passes whatever the GPU says."""
    yield CheckResult("gpu.remap", Status.PASS, "no row remap pending")


def mounts_always_fail(ctx: CheckContext) -> Iterator[CheckResult]:
    """A check that fires on everything: it would drain every healthy node."""
    yield CheckResult("host.mounts", Status.FAIL, "not mounted", component="/")


def disk_raises(ctx: CheckContext) -> Iterator[CheckResult]:
    """A bug: the check's own exception (an ERROR, never a verdict on the node)."""
    raise KeyError("min_free_gib")
    yield  # pragma: no cover


def mem_hangs(ctx: CheckContext) -> Iterator[CheckResult]:
    """A check that never answers (its probe process is killed at its timeout)."""
    time.sleep(3600)
    yield CheckResult("host.mem", Status.PASS, "never")


BROKEN = {
    "gpu.remap": remap_never_looks,
    "host.mounts": mounts_always_fail,
    "host.disk": disk_raises,
    "host.mem": mem_hangs,
}


def install(*check_ids: str) -> None:
    registry.all_checks()
    for cid in check_ids:
        registry._REGISTRY[cid] = replace(registry._REGISTRY[cid], func=BROKEN[cid])


def launcher(*check_ids: str, environ: dict[str, str] | None = None) -> list[str]:
    """`python -I -c ...` running `nodecheck ARGS...` with these checks broken (and these
    variables set: an agent started by tests.fixtures.agent gets only PATH)."""
    code = (
        f"import os, sys; os.environ.update({dict(environ or {})!r}); "
        f"sys.path.insert(0, {str(REPO)!r}); "
        "from tests.unit import selftest_breakers as b; "
        f"b.install(*{check_ids!r}); "
        "from nodecheck.entry.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    return [sys.executable, "-I", "-c", code]
