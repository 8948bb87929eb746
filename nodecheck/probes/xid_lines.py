"""The NVIDIA driver's GPU error lines in a kernel message, as data.

Shapes read (the driver's own print formats, open-gpu-kernel-modules):
- `NVRM: Xid (PCI:0000:01:00): 79, pid=..., name=..., <text>`, and the short form without
  anything after the number (`NVRM: Xid (PCI:0000:1a:00): 79`);
- MIG attribution: `NVRM: Xid (PCI:0000:01:00 GPU-I:05): 94, ...`, also with ` GPU-CI:02`;
- older drivers without `PCI:`: `NVRM: Xid (0000:03:00): 14, Channel 00000001`;
- NVLink5 Xids 144-150 name their unit and `Fatal`/`Nonfatal` first:
  `149, NETIR_LINK_EVT  Fatal   XC0 i0 Link 01 (0x021425c6 ...)`;
- Xid 154 says what recovery the GPU now needs:
  `154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)`;
- "fallen off the bus" without an Xid line, in one line (`NVRM: GPU 0000:01:00.0: GPU has
  fallen off the bus.`) or the multi-line probe-time message (`NVRM: The NVIDIA GPU
  0000:b3:00.0 (PCI ID: 10de:26b5) installed in this system has fallen off the bus ...`);
- NVSwitch: `nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32 ...`.
A line that says `NVRM: Xid` or `SXid` in a shape not listed here is returned as unparsed,
so that the check can say so instead of passing it over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

XID_MARKS = ("NVRM: Xid", "SXid (", "fallen off the bus")
FALLEN_OFF_BUS_XID = 79

_PCI = r"(?P<pci>[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:\.[0-7])?"
_XID = re.compile(
    r"NVRM: Xid \((?:PCI:)?" + _PCI + r"(?:\s+GPU-I:(?P<gi>\d+))?(?:\s+GPU-CI:(?P<ci>\d+))?\)"
    r":\s*(?P<code>\d+)(?:,\s*(?P<rest>.*?))?\s*$"
)
_NOISE = re.compile(r"^(?:pid=[^,]*,\s*)?(?:name=[^,]*,\s*)?")
_NVLINK5 = re.compile(
    r"^(?P<unit>[A-Z][A-Z0-9_]*(?:/[A-Z][A-Z0-9_]*)?)\s+(?P<sev>Nonfatal|Fatal)\b"
)
_RECOVERY = re.compile(
    r"GPU recovery action changed from 0x[0-9a-fA-F]+ \((?P<old>[^)]*)\) "
    r"to 0x[0-9a-fA-F]+ \((?P<new>[^)]*)\)"
)
_FALLEN = re.compile(
    r"NVRM: (?:The NVIDIA )?GPU (?:at )?(?:PCI:)?" + _PCI + r"\b.*?fallen off the bus"
)
_SXID = re.compile(
    r"nvidia-nvswitch(?P<switch>\d+): SXid \(PCI:" + _PCI + r"\): (?P<code>\d+)"
    r"(?:, (?P<sev>Non-fatal|Fatal))?(?:,?\s*(?P<rest>.*?))?\s*$"
)


@dataclass(frozen=True)
class GpuEvent:
    """One Xid, SXid or fallen-off-the-bus message."""

    pos: int
    source: str  # "xid", "fallen-off-bus" (no Xid line), "sxid" (an NVSwitch)
    code: int  # the Xid or SXid number; 79 for a fallen-off-the-bus message
    pci: str  # domain:bus:device, lower case, 4-digit domain: "0000:b3:00"
    text: str  # what follows the number, without pid=/name=
    gpu_instance: int | None = None  # MIG GPU instance the driver attributed it to
    compute_instance: int | None = None
    fatal: bool | None = None  # NVLink5 Xids and SXids say Fatal / Nonfatal; None: not said
    unit: str = ""  # NVLink5 unit (NETIR_LINK_EVT...), empty elsewhere
    recovery_action: str = ""  # Xid 154: the action the GPU needs now ("GPU Reset Required")
    switch: int | None = None  # SXid: the nvidia-nvswitchN number


def normal_pci(address: str) -> str:
    """'00000000:B3:00.0', '0000:b3:00' -> '0000:b3:00' (domain:bus:device)."""
    domain, bus, device = address.split(".")[0].lower().split(":")
    return f"{int(domain, 16):04x}:{bus}:{device}"


def parse_event(pos: int, text: str) -> GpuEvent | str | None:
    """The event in one kernel message; None when it has none; the text itself when it
    names an Xid/SXid in a shape we do not know."""
    if "NVRM: Xid" in text:
        match = _XID.search(text)
        if match is None:
            return text
        return _xid_event(pos, match)
    if "SXid (" in text:
        match = _SXID.search(text)
        if match is None:
            return text
        fatal = None if match["sev"] is None else match["sev"] == "Fatal"
        return GpuEvent(
            pos,
            "sxid",
            int(match["code"]),
            normal_pci(match["pci"]),
            (match["rest"] or ""),
            fatal=fatal,
            switch=int(match["switch"]),
        )
    if "fallen off the bus" in text and (match := _FALLEN.search(text)):
        return GpuEvent(
            pos,
            "fallen-off-bus",
            FALLEN_OFF_BUS_XID,
            normal_pci(match["pci"]),
            "GPU has fallen off the bus (no Xid line)",
        )
    return None


def _xid_event(pos: int, match: re.Match[str]) -> GpuEvent:
    rest = _NOISE.sub("", match["rest"] or "").strip()
    fatal, unit, action = None, "", ""
    if nvlink := _NVLINK5.match(rest):
        fatal, unit = nvlink["sev"] == "Fatal", nvlink["unit"]
    if recovery := _RECOVERY.search(rest):
        action = recovery["new"].strip()
    return GpuEvent(
        pos,
        "xid",
        int(match["code"]),
        normal_pci(match["pci"]),
        rest,
        gpu_instance=int(match["gi"]) if match["gi"] else None,
        compute_instance=int(match["ci"]) if match["ci"] else None,
        fatal=fatal,
        unit=unit,
        recovery_action=action,
    )
