"""host.services: required daemons alive (nvidia-fabricmanager, munge...)."""

from __future__ import annotations

from collections.abc import Iterator

from nodecheck.checks.context import CheckContext
from nodecheck.checks.host.common import GROUP
from nodecheck.checks.registry import Option, check
from nodecheck.run.results import CheckResult, Status


@check(
    "host.services",
    group=GROUP,
    summary="required daemons running (by process name), e.g. munged, nvidia-fabricmanager",
    timeout_s=3.0,
    severity="critical",
    remedy="restart-service",
    options={"required": Option(list, [], "process names that must be running", item=str)},
)
def host_services(ctx: CheckContext) -> Iterator[CheckResult]:
    """Without munged no Slurm RPC authenticates; without nvidia-fabricmanager an NVSwitch
    system's GPUs cannot talk. Fix: restart the daemon and find why it died (journal, core)."""
    from nodecheck.probes import host

    required: list[str] = ctx.options["required"]
    if not required:
        yield CheckResult("host.services", Status.SKIP, "no services configured")
        return
    # /proc/PID/comm is truncated to 15 characters by the kernel.
    procs = host.processes(ctx.proc_path(), with_cgroup=False)
    running = {p.name[:15] for p in procs.values() if not p.zombie}
    for name in required:
        if name[:15] in running:
            yield CheckResult("host.services", Status.PASS, "running", component=name)
        else:
            yield CheckResult("host.services", Status.FAIL, "not running", component=name)
