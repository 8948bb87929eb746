"""What an Xid or SXid event means for the node (gpu.xid): fail, warn or info.

The probes hold NVIDIA's tables as data (`nodecheck.probes.xid_catalogue`: each Xid's
resolution buckets; `nodecheck.probes.recovery_action`: Xid 154's action codes); the
verdicts drawn from them, and a site's overrides, are here (docs/gpu.md, "XID policy")."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from nodecheck.checks.gpu import recovery
from nodecheck.probes.xid_catalogue import CATALOGUE, XidEntry
from nodecheck.probes.xid_lines import GpuEvent

# Immediate resolution bucket -> (status, remedy). "info": recorded, never a WARN or FAIL.
IMMEDIATE_VERDICTS: dict[str, tuple[str, str]] = {
    "RESTART_BM": ("fail", "reboot"),
    "RESET_GPU": ("fail", "reset-gpu"),
    "RESTART_VM": ("fail", "reset-gpu"),  # bare metal has no VM: the GPU itself is reset
    "WORKFLOW_XID_48": ("fail", "reset-gpu"),  # solo: reset; with 63/64: drain and reset
    "WORKFLOW_NVLINK_ERR": ("fail", "reset-gpu"),  # "a GPU reset or node reboot is needed"
    "CHECK_MECHANICALS": ("fail", "admin"),  # reseat the board, connect its power
    "CONTACT_SUPPORT": ("warn", ""),
    "UPDATE_SWFW": ("warn", ""),
    "": ("warn", ""),  # no bucket given: worth a look, not a drain
    "CHECK_UVM": ("info", ""),  # a bare-metal node without vGPU: ignore
    "RESTART_APP": ("info", ""),  # the job's own fault; the next job is not at risk
    "IGNORE": ("info", ""),
    "WORKFLOW_XID_45": ("info", ""),  # follows the Xid that caused it
}


@dataclass(frozen=True)
class XidVerdict:
    """What one event means for the node."""

    status: str  # "fail", "warn" or "info"
    remedy: str  # a results.REMEDIES key, or ""
    why: str  # the catalogue's words: mnemonic and bucket, or the override that decided


def judge(
    event: GpuEvent,
    fail: Collection[int] = (),
    warn: Collection[int] = (),
    ignore: Collection[int] = (),
    branch: int | None = None,
) -> XidVerdict:
    """The verdict on one event: a site's override first (`fail`/`warn`/`ignore` list the
    Xid numbers), then the catalogue. SXids are judged by their own Fatal/Non-fatal word.
    `branch` is the driver branch that printed the event (570 for 570.86.15; None when
    unknown): Xid 154's recovery action code means different things in different branches
    (probes/recovery_action.py)."""
    if event.source == "sxid":
        if event.fatal:
            return XidVerdict("fail", "reboot", "fatal NVSwitch SXid: reset the fabric")
        return XidVerdict("info" if event.fatal is False else "warn", "", "NVSwitch SXid")
    entry = CATALOGUE.get(event.code)
    name = entry.mnemonic if entry else "not in NVIDIA's Xid catalogue"
    for codes, status in ((fail, "fail"), (warn, "warn"), (ignore, "info")):
        if event.code in codes:
            remedy = _catalogue_remedy(event, entry) if status == "fail" else ""
            return XidVerdict(status, remedy or "reset-gpu", f"{name}; site override")
    if entry is None:
        return XidVerdict("warn", "", name)
    bucket = entry.immediate
    if bucket == "XID_154":
        code = event.recovery_code
        if code is None:
            return XidVerdict("warn", "", f"{name}: action not given")
        action = recovery.judge(code, branch)
        printed = f" printed as {event.recovery_action!r}" if event.recovery_action else ""
        return XidVerdict(action.status, action.remedy, f"{name}: {action.why}{printed}")
    if bucket == "WORKFLOW_NVLINK5_ERR":
        if event.fatal is None:
            return XidVerdict("warn", "", f"{name}: Fatal/Nonfatal not given")
        status, remedy = ("fail", "reset-gpu") if event.fatal else ("info", "")
        word = "Fatal" if event.fatal else "Nonfatal"
        return XidVerdict(status, remedy, f"{name} {event.unit} {word}".replace("  ", " "))
    status, remedy = IMMEDIATE_VERDICTS.get(bucket, ("warn", ""))
    return XidVerdict(status, remedy, f"{name}: {bucket or 'no resolution bucket'}")


def _catalogue_remedy(event: GpuEvent, entry: XidEntry | None) -> str:
    if entry is None:
        return ""
    return IMMEDIATE_VERDICTS.get(entry.immediate, ("", ""))[1]
