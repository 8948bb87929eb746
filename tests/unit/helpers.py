"""Small builders shared by the unit tests."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from nodecheck.checks.context import CheckContext, JobInfo, NodeSettings
from nodecheck.checks.registry import ALL_PHASES, Check
from nodecheck.core import progress
from nodecheck.core.results import CheckResult, Status

NVML_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvml"


def nvml_check_ids(registry: Mapping[str, Any]) -> list[str]:
    """The gpu.* checks that read NVML (gpu.xid reads the kernel log)."""
    return sorted(c for c in registry if c.startswith("gpu.") and c != "gpu.xid")


def make_ctx(
    phase: str = "prolog",
    options: Mapping[str, Any] | None = None,
    job: JobInfo | None = None,
    procfs_root: Path = Path("/proc"),
    sysfs_root: Path = Path("/sys"),
    state_dir: Path = Path("/nonexistent-state"),
    nvml: str = "real",
) -> CheckContext:
    return CheckContext(
        phase=phase,
        node="n1",
        node_class="test",
        job=job or JobInfo(job_id="812", uid=1000, user="alice"),
        settings=NodeSettings(
            sysfs_root=sysfs_root, procfs_root=procfs_root, nvml=nvml, state_dir=state_dir
        ),
        options=dict(options or {}),
    )


def make_check(
    check_id: str,
    func: Callable[[CheckContext], Iterable[CheckResult]],
    timeout_s: float = 2.0,
    group: str | None = None,
) -> Check:
    return Check(
        id=check_id,
        func=func,
        phases=ALL_PHASES,
        timeout_s=timeout_s,
        summary="test check",
        group=group,
    )


def options_of(check: Check, **overrides: Any) -> dict[str, Any]:
    return {name: overrides.get(name, opt.default) for name, opt in check.options.items()}


# Probe stand-ins for the runner's tests (module level: a probe-pool member gets them by name).
HANG_S = 3600


def hangs(ctx: CheckContext) -> Iterable[CheckResult]:
    progress.note("nvmlDeviceGetRemappedRows gpu3")
    time.sleep(HANG_S)
    yield CheckResult("t.hang", Status.PASS, "never")


def raises(ctx: CheckContext) -> Iterable[CheckResult]:
    raise ValueError("bad parse of 'x'")
    yield  # pragma: no cover


def dies(ctx: CheckContext) -> Iterable[CheckResult]:
    os.kill(os.getpid(), signal.SIGSEGV)
    yield  # pragma: no cover
