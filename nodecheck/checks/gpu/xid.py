"""gpu.xid: Xids, SXids and fallen-off-the-bus messages in the kernel log since the last hook
run (a cursor per boot), judged by NVIDIA's Xid catalogue, GPUs named by NVML index."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from nodecheck.checks.context import CheckContext
from nodecheck.checks.gpu.common import _result
from nodecheck.checks.registry import Option, check
from nodecheck.core.progress import note
from nodecheck.core.results import CheckResult, Status

if TYPE_CHECKING:
    from nodecheck.checks.gpu.xid_verdict import XidVerdict
    from nodecheck.probes.kernlog import KernelLog
    from nodecheck.probes.xid_lines import GpuEvent

XID_STATE_KEY = "gpu.xid.cursor"
XID_STATE_BUSY_MS = 2000  # the lock wait ends well inside the check's 5 s deadline
_RANK = {"fail": 2, "warn": 1, "info": 0}


def _pci_key(address: str) -> tuple[int, int, int] | None:
    """'0000:9a:00', '00000000:9A:00.0' -> (0, 0x9a, 0)."""
    parts = address.split(".")[0].split(":")
    if len(parts) != 3:
        return None
    try:
        return int(parts[0], 16), int(parts[1], 16), int(parts[2], 16)
    except ValueError:
        return None


def gpu_indices(ctx: CheckContext) -> dict[tuple[int, int, int], int]:
    """PCI address -> NVML index. The driver lists its GPUs in /proc/driver/nvidia/gpus;
    NVML (and nvidia-smi, SLURM_JOB_GPUS, probes/jobscope.py) numbers them in PCI bus order,
    while the device minor (`nvidiaN`) is the driver's probe order and may differ. GPUs the
    driver excludes (`GPU Excluded: Yes`) are invisible to NVML and take no index."""
    root = ctx.proc_path("driver", "nvidia", "gpus")
    try:
        entries = list(root.iterdir())
    except OSError:
        return {}
    visible = []
    for entry in entries:
        key = _pci_key(entry.name)
        try:
            info = (entry / "information").read_text(errors="replace")
        except OSError:
            info = ""
        if key and not re.search(r"^GPU Excluded:\s*Yes", info, re.MULTILINE):
            visible.append(key)
    return {key: index for index, key in enumerate(sorted(visible))}


def _boot_id(ctx: CheckContext) -> str:
    try:
        return ctx.proc_path("sys", "kernel", "random", "boot_id").read_text().strip()
    except OSError:
        return ""


def driver_branch(ctx: CheckContext) -> int | None:
    """The branch of the loaded NVIDIA kernel module (570 for 570.86.15), from
    /proc/driver/nvidia/version; None when it cannot be read.

    Xid 154's recovery action code means different things in different branches, and this is
    the module that printed the Xids: the cursor starts again at every boot, and the module
    cannot be swapped under running GPU users. Not NVML's version: gpu.xid must answer when
    NVML hangs. Not the "NVRM: loading ... Kernel Module X" line of the kernel log: on a node up
    for months the ring buffer has long dropped it."""
    from nodecheck.probes.recovery_action import driver_branch as branch_of
    from nodecheck.probes.recovery_action import module_version

    try:
        text = ctx.proc_path("driver", "nvidia", "version").read_text(errors="replace")
    except OSError:
        return None
    return branch_of(module_version(text))


def _component(event: GpuEvent, indices: dict[tuple[int, int, int], int]) -> str:
    if event.source == "sxid":
        return f"nvswitch{event.switch}"
    key = _pci_key(event.pci)
    index = indices.get(key) if key else None
    return f"gpu{index}" if index is not None else f"pci{event.pci}"


def _unreadable(path: Path, log: KernelLog, unparsed: list[str]) -> str:
    """Why this read cannot be trusted to have seen every Xid, or ""."""
    odd = [*log.unrecognised_nvrm, *unparsed]
    if odd:
        return f"{path}: {len(odd)} NVRM line(s) in a shape not understood: {odd[0][:120]}"
    if log.lines and not log.kind:
        return f"{path}: {log.lines} lines, none in a kernel log format nodecheck reads"
    return ""


@check(
    "gpu.xid",
    severity="critical",
    remedy="reset-gpu",
    summary="no Xid in the kernel log since the last run that NVIDIA's catalogue resolves "
    "with a GPU reset or reboot",
    timeout_s=5.0,
    options={
        "kmsg": Option(
            str,
            "/dev/kmsg",
            "kernel log: /dev/kmsg, or a saved log (kmsg, dmesg, syslog, journalctl -k)",
        ),
        "critical": Option(list, [], "Xids that FAIL whatever the catalogue says", item=int),
        "warn": Option(list, [], "Xids that WARN whatever the catalogue says", item=int),
        "ignore": Option(list, [], "Xids only recorded, whatever the catalogue says", item=int),
    },
)
def gpu_xid(ctx: CheckContext) -> Iterator[CheckResult]:
    """The driver logs an Xid for every GPU error it sees. NVIDIA's Xid catalogue says what
    each needs: a GPU reset or a reboot FAILs (46, 48, 62, 64, 79, 95, 109, 110, 119, 120,
    136, 140, 143, 155, 156, 158, the Fatal NVLink5 sub-codes of 144-150, Xid 154 asking for
    a reset or reboot, fatal NVSwitch SXids); a support case WARNs; an application's own
    fault (13, 31, 43, 94...) and ignorable events (63: row remapped) are only recorded.
    Each Xid is reported once: a cursor kept in the state dir (per boot) remembers how far
    the hooks have read; a manual run looks without moving it. Fix: see NVIDIA's Xid
    catalogue for the number; reset the GPU or reboot, RMA when it recurs. Not in the NVML
    group: it works when NVML hangs."""
    cid = "gpu.xid"
    from nodecheck.checks.gpu.xid_verdict import judge
    from nodecheck.probes.kernlog import read_kernel_log
    from nodecheck.probes.xid_lines import XID_MARKS, collect
    from nodecheck.store.transaction import locked_update

    path = Path(ctx.options["kmsg"])
    note(f"read {path}")
    try:
        log = read_kernel_log(path, keep=XID_MARKS)
    except OSError as exc:
        yield _result(cid, Status.ERROR, f"cannot read {path}: {exc.strerror or exc}")
        return
    boot = _boot_id(ctx)
    where = {"boot_id": boot, "source": str(path), "kind": log.kind}
    # One transaction: two hook runs at once (a shared node) do not both report an Xid.
    with locked_update(ctx.settings.state_dir, XID_STATE_BUSY_MS) as state:
        cursor = state.get_json(XID_STATE_KEY) or {}
        same = all(cursor.get(key) == value for key, value in where.items())
        after = int(cursor.get("pos", -1)) if same else -1
        end = max(log.positions, default=after)
        if ctx.keeps_state:
            state.put_json(XID_STATE_KEY, {**where, "pos": max(end, after)})
    # The records just before the cursor are read too: a message printed over several
    # records, or an SXid and its follow-up lines, may straddle it.
    events, odd = collect(log.records, after)
    unparsed = [text for _, text in odd]
    if why := _unreadable(path, log, unparsed):
        yield _result(cid, Status.ERROR, why[:200])
    overrides = {key: set(ctx.options[key]) for key in ("critical", "warn", "ignore")}
    indices = gpu_indices(ctx)
    branch = driver_branch(ctx) if any(event.code == 154 for event in events) else None
    by_component: dict[str, list[tuple[GpuEvent, XidVerdict]]] = {}
    for event in events:
        verdict = judge(
            event, overrides["critical"], overrides["warn"], overrides["ignore"], branch
        )
        by_component.setdefault(_component(event, indices), []).append((event, verdict))
    recorded: list[int] = []
    for component, found in sorted(by_component.items()):
        worst = max(_RANK[verdict.status] for _, verdict in found)
        if worst == 0:
            recorded.extend(event.code for event, _ in found)
            continue
        yield _event_result(cid, component, found, worst)
    if same and log.kind == "kmsg":
        first = min(log.positions, default=after + 1)
        lost = sum(1 for pos in log.lost_before if pos > after)
        if missed := max(0, first - after - 1) + lost:
            msg = f"{missed} kernel log records lost before they were read: Xids may be missed"
            yield _result(cid, Status.WARN, msg)
    if not any(_RANK[v.status] for found in by_component.values() for _, v in found):
        since = "since last run" if same else "since boot"
        others = sorted(set(recorded))
        extra = f" ({len(recorded)} recorded: Xid {', '.join(map(str, others))})" if others else ""
        read_since = sum(1 for pos in log.positions if pos > after)
        values = {"records": read_since, "other_xids": others}
        yield _result(cid, Status.PASS, f"no Xid needing action {since}{extra}", **values)


def _event_result(
    cid: str, component: str, found: list[tuple[GpuEvent, XidVerdict]], worst: int
) -> CheckResult:
    """One result per GPU (or NVSwitch): the first event of the worst verdict names it."""
    group = [(event, verdict) for event, verdict in found if _RANK[verdict.status] == worst]
    first, verdict = group[0]
    more = f" (+{len(group) - 1} more)" if len(group) > 1 else ""
    kind = "SXid" if first.source == "sxid" else "Xid"
    text = f": {first.text}" if first.text else ""
    remedies = {v.remedy for _, v in group}
    remedy = "reboot" if "reboot" in remedies else verdict.remedy
    values = {
        "xids": sorted({event.code for event, _ in found}),
        "count": len(found),
        "why": verdict.why,
    }
    if first.gpu_instance is not None:
        values["gpu_instance"] = first.gpu_instance
    status = Status.FAIL if worst == 2 else Status.WARN
    message = f"{kind} {first.code}{text}{more}"[:200]
    return CheckResult(cid, status, message, component, values, remedy=remedy)
