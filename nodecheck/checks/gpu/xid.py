"""gpu.xid: XIDs in the kernel log since the last hook run (cursor per boot)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Option, check
from nodecheck.run.progress import note
from nodecheck.run.results import CheckResult, Status

if TYPE_CHECKING:
    pass
from nodecheck.checks.gpu.common import _result

# --- gpu.xid: the kernel log ----------------------------------------------------------

XID_STATE_KEY = "gpu.xid.cursor"
DEFAULT_CRITICAL_XIDS = [48, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140]
# Fell off the bus, GSP timeout/error: a GPU reset is not enough, the node must reboot.
XID_NEEDS_REBOOT = {79, 119, 120}


def _pci_key(address: str) -> tuple[int, int, int] | None:
    """'0000:9a:00', '00000000:9A:00.0' -> (0, 0x9a, 0)."""
    parts = address.split(".")[0].split(":")
    if len(parts) != 3:
        return None
    try:
        return int(parts[0], 16), int(parts[1], 16), int(parts[2], 16)
    except ValueError:
        return None


def _gpu_minors(ctx: CheckContext) -> dict[tuple[int, int, int], int]:
    """PCI address -> device minor (nvidiaN), from the driver's /proc/driver/nvidia/gpus."""
    out = {}
    root = ctx.proc_path("driver", "nvidia", "gpus")
    try:
        entries = list(root.iterdir())
    except OSError:
        return out
    for entry in entries:
        key = _pci_key(entry.name)
        try:
            info = (entry / "information").read_text(errors="replace")
        except OSError:
            continue
        match = re.search(r"^Device Minor:\s*(\d+)", info, re.MULTILINE)
        if key and match:
            out[key] = int(match[1])
    return out


def _boot_id(ctx: CheckContext) -> str:
    try:
        return ctx.proc_path("sys", "kernel", "random", "boot_id").read_text().strip()
    except OSError:
        return ""


@check(
    "gpu.xid",
    severity="critical",
    remedy="reset-gpu",
    summary="no critical NVIDIA XID in the kernel log since the last run",
    timeout_s=5.0,
    options={
        "kmsg": Option(
            str, "/dev/kmsg", "kernel log: /dev/kmsg, or a file in kmsg or dmesg format"
        ),
        "critical": Option(list, DEFAULT_CRITICAL_XIDS, "XIDs that FAIL", item=int),
        "warn": Option(list, [], "XIDs that WARN", item=int),
    },
)
def gpu_xid(ctx: CheckContext) -> Iterator[CheckResult]:
    """The driver logs an XID for every GPU error it sees. The critical ones mean the GPU
    needs a reset or worse: 48 DBE, 63/64 row remap, 74 NVLink, 79 fell off the bus,
    92 high SBE rate, 94/95 contained/uncontained ECC, 119/120 GSP, 140 unrecovered ECC.
    Each XID is reported once: a cursor kept in the state dir (per boot) remembers how far
    the log was read. Fix: see NVIDIA's XID catalogue for the number; usually reset the
    GPU or reboot, RMA when it recurs. Not in the NVML group: it works when NVML hangs."""
    cid = "gpu.xid"
    from nodecheck.probes.kernlog import XID_MARK, Xid, parse_xids, read_kernel_log
    from nodecheck.store.state import open_state

    path = Path(ctx.options["kmsg"])
    critical, warn = set(ctx.options["critical"]), set(ctx.options["warn"])
    note(f"read {path}")
    try:
        log = read_kernel_log(path, keep=XID_MARK)
    except OSError as exc:
        yield _result(cid, Status.ERROR, f"cannot read {path}: {exc.strerror or exc}")
        return
    boot = _boot_id(ctx)
    with open_state(ctx.settings.state_dir) as state:
        cursor = state.get_json(XID_STATE_KEY) or {}
        same = cursor.get("boot_id") == boot and cursor.get("source") == str(path)
        same = same and cursor.get("kind") == log.kind
        after = int(cursor.get("pos", -1)) if same else -1
        fresh = [r for r in log.records if r.pos > after]
        end = max(log.positions, default=after)
        state.put_json(
            XID_STATE_KEY,
            {"boot_id": boot, "source": str(path), "kind": log.kind, "pos": max(end, after)},
        )
    xids = parse_xids(fresh)
    read_since = sum(1 for pos in log.positions if pos > after)
    minors = _gpu_minors(ctx)
    by_component: dict[str, list[Xid]] = {}
    for x in xids:
        key = _pci_key(x.pci)
        minor = minors.get(key) if key else None
        component = f"gpu{minor}" if minor is not None else f"pci{x.pci}"
        by_component.setdefault(component, []).append(x)
    gap = ""
    if same and log.kind == "kmsg":
        first = min(log.positions, default=after + 1)
        missed = max(0, first - after - 1) + log.lost
        if missed:
            gap = f"{missed} kernel log records lost before they were read"
    worst_any = False
    for component, found in sorted(by_component.items()):
        values = {"xids": sorted({x.xid for x in found}), "count": len(found)}
        bad = [x for x in found if x.xid in critical]
        meh = [x for x in found if x.xid in warn]
        for group, status in ((bad, Status.FAIL), (meh, Status.WARN)):
            if group:
                first = group[0]
                more = f" (+{len(group) - 1} more)" if len(group) > 1 else ""
                msg = f"Xid {first.xid}: {first.text}{more}"
                act = "reboot" if any(x.xid in XID_NEEDS_REBOOT for x in group) else ""
                yield CheckResult(cid, status, msg[:200], component, values, remedy=act)
                worst_any = True
                break
    if gap:
        yield _result(cid, Status.WARN, f"{gap}: XIDs may have been missed")
    if not worst_any:
        others = sorted({x.xid for x in xids})
        extra = f" ({len(xids)} other: Xid {', '.join(map(str, others))})" if xids else ""
        since = "since last run" if same else "since boot"
        values = {"records": read_since, "other_xids": others}
        yield _result(cid, Status.PASS, f"no critical XID {since}{extra}", **values)
