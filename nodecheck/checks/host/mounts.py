"""host.mounts: required filesystems mounted and answering (a hung NFS server must not hang us)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from nodecheck.checks import boundary
from nodecheck.checks.context import CheckContext
from nodecheck.checks.host.common import GROUP
from nodecheck.checks.registry import Option, check
from nodecheck.core.progress import note
from nodecheck.core.results import CheckResult, Status


@check(
    "host.mounts",
    group=GROUP,
    summary="required filesystems mounted (type, read-write) and responding within a deadline",
    timeout_s=10.0,
    severity="critical",
    remedy="admin",
    options={
        "required": Option(list, [], "mount points that must be mounted", item=str),
        "fstypes": Option(dict, {}, "mount point -> expected filesystem type", item=str),
        "read_write": Option(list, [], "mount points that must be mounted rw", item=str),
        "probe_timeout_s": Option((int, float), 3.0, "a mount slower than this to stat is hung"),
    },
)
def host_mounts(ctx: CheckContext) -> Iterator[CheckResult]:
    """A missing /home or /scratch, or a hung NFS/Lustre client, kills every job that lands.
    Fix: remount (`mount -a`), check the storage network / client, then resume."""
    from nodecheck.core import bounded
    from nodecheck.probes import host

    required: list[str] = ctx.options["required"]
    if not required:
        yield CheckResult("host.mounts", Status.SKIP, "no mounts configured")
        return
    mounts = host.mounts(ctx.proc_path())
    present = []
    for target in required:
        mount = mounts.get(target)
        want_type = ctx.options["fstypes"].get(target)
        if mount is None:
            yield CheckResult("host.mounts", Status.FAIL, "not mounted", component=target)
        elif want_type and mount.fstype != want_type:
            msg = f"mounted as {mount.fstype}, expected {want_type}"
            yield CheckResult("host.mounts", Status.FAIL, msg, component=target)
        elif target in ctx.options["read_write"] and "ro" in mount.options:
            yield CheckResult("host.mounts", Status.FAIL, "mounted read-only", component=target)
        else:
            present.append(target)
    note(f"stat {' '.join(present)}")
    outcomes = bounded.call_all_with_deadline(
        {t: (lambda t=t: os.statvfs(t)) for t in present}, ctx.options["probe_timeout_s"]
    )
    for target in present:
        got = outcomes[target]
        if not got.finished:
            msg = f"not responding within {ctx.options['probe_timeout_s']}s (hung mount?)"
            yield CheckResult("host.mounts", Status.FAIL, msg, component=target)
        elif got.error is not None:  # the kernel's errno FAILs; our own bug is an ERROR
            yield boundary.failure_or_internal("host.mounts", target, got.error, "stat failed")
        else:
            fstype = mounts[target].fstype
            yield CheckResult("host.mounts", Status.PASS, f"{fstype} mounted", component=target)
