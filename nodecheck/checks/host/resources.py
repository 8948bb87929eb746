"""host.mem and host.disk: usable memory for the node class, free space where jobs write."""

from __future__ import annotations

from collections.abc import Iterator

from nodecheck.checks import boundary
from nodecheck.checks.context import CheckContext
from nodecheck.checks.host.common import GIB, GROUP
from nodecheck.checks.registry import Option, check
from nodecheck.core.results import CheckResult, Status


@check(
    "host.mem",
    group=GROUP,
    summary="usable memory: total not below the node class's size (lost DIMMs), enough available",
    timeout_s=2.0,
    severity="high",
    remedy="cleanup",
    options={
        "min_total_gib": Option((int, float), 0, "FAIL when MemTotal is below this (0: off)"),
        "min_available_gib": Option((int, float), 0, "FAIL when MemAvailable is below this"),
        "warn_available_gib": Option((int, float), 0, "WARN when MemAvailable is below this"),
    },
)
def host_mem(ctx: CheckContext) -> Iterator[CheckResult]:
    """MemTotal shrinks when a DIMM fails or is mapped out; MemAvailable low at job start
    means a previous job left memory pinned (leaked shm, hugepages, page cache that won't go).
    Fix: check `dmesg`/BMC for DIMM errors, or reboot to release leaked memory."""
    from nodecheck.probes import host

    mem = host.memory(ctx.proc_path())
    total, avail = mem.total / GIB, mem.available / GIB
    values = {"total_gib": round(total, 2), "available_gib": round(avail, 2)}
    opts = ctx.options
    if opts["min_total_gib"] and total < opts["min_total_gib"]:
        msg = f"memory {total:.1f} GiB below expected {opts['min_total_gib']} GiB (lost DIMM?)"
        yield CheckResult("host.mem", Status.FAIL, msg, values=values, remedy="replace")
    elif opts["min_available_gib"] and avail < opts["min_available_gib"]:
        msg = f"only {avail:.1f} GiB available (need {opts['min_available_gib']} GiB)"
        yield CheckResult("host.mem", Status.FAIL, msg, values=values)
    elif opts["warn_available_gib"] and avail < opts["warn_available_gib"]:
        msg = f"only {avail:.1f} GiB available (warn below {opts['warn_available_gib']} GiB)"
        yield CheckResult("host.mem", Status.WARN, msg, values=values)
    else:
        yield CheckResult(
            "host.mem", Status.PASS, f"{avail:.1f} of {total:.1f} GiB available", values=values
        )


@check(
    "host.disk",
    group=GROUP,
    summary="free space on scratch paths (/tmp, /dev/shm, local scratch)",
    timeout_s=5.0,
    severity="high",
    remedy="cleanup",
    options={
        "min_free_gib": Option(dict, {"/tmp": 1.0}, "path -> minimum free GiB", item=(int, float)),
        "min_free_inodes_percent": Option((int, float), 1.0, "FAIL below this share of inodes"),
        "stat_timeout_s": Option((int, float), 2.0, "a path slower than this to stat is hung"),
    },
)
def host_disk(ctx: CheckContext) -> Iterator[CheckResult]:
    """A full /tmp or /dev/shm makes jobs die at start in confusing ways (NCCL shm, compiler
    caches). Fix: clean leftovers of earlier jobs (tmpwatch, per-job tmpfs) or grow the disk."""
    from nodecheck.core import bounded
    from nodecheck.probes import host

    wanted: dict[str, float] = ctx.options["min_free_gib"]
    if not wanted:
        yield CheckResult("host.disk", Status.SKIP, "no paths configured")
        return
    outcomes = bounded.call_all_with_deadline(
        {path: (lambda p=path: host.disk_space(p)) for path in wanted},
        ctx.options["stat_timeout_s"],
    )
    for path, need in wanted.items():
        got = outcomes[path]
        if not got.finished:
            yield CheckResult("host.disk", Status.FAIL, "statvfs hung", component=path)
            continue
        if got.error is not None:  # the kernel's errno FAILs; our own bug is an ERROR
            yield boundary.failure_or_internal("host.disk", path, got.error, "cannot stat")
            continue
        space = got.value
        free, inodes_pct = space.free / GIB, space.inodes_free_percent
        values = {"free_gib": round(free, 2), "free_inodes_percent": round(inodes_pct, 2)}
        if free < need:
            msg = f"{free:.2f} GiB free, need {need} GiB"
            yield CheckResult("host.disk", Status.FAIL, msg, component=path, values=values)
        elif inodes_pct < ctx.options["min_free_inodes_percent"]:
            msg = f"only {inodes_pct:.2f}% inodes free"
            yield CheckResult("host.disk", Status.FAIL, msg, component=path, values=values)
        else:
            msg = f"{free:.1f} GiB free"
            yield CheckResult("host.disk", Status.PASS, msg, component=path, values=values)
