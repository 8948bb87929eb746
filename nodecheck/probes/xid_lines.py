"""The NVIDIA driver's GPU error lines in a kernel message, as data.

Shapes read (the driver's own print formats, open-gpu-kernel-modules):
- `NVRM: Xid (PCI:0000:01:00): 79, pid=..., name=..., <text>`, and the short form without
  anything after the number (`NVRM: Xid (PCI:0000:1a:00): 79`);
- MIG attribution: `NVRM: Xid (PCI:0000:01:00 GPU-I:05): 94, ...`, also with ` GPU-CI:02`;
- older drivers without `PCI:`: `NVRM: Xid (0000:03:00): 14, Channel 00000001`;
- NVLink5 Xids 144-150 name their unit and `Fatal`/`Nonfatal` first:
  `149, NETIR_LINK_EVT  Fatal   XC0 i0 Link 01 (0x021425c6 ...)`;
- Xid 154 says what recovery the GPU now needs:
  `154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)`; the code
  (`0x2`) is what counts: driver branches print other names for the same code (`OS Reboot`,
  `PF FLR` for 0x1);
- "fallen off the bus" without an Xid line, in one line (`NVRM: GPU 0000:01:00.0: GPU has
  fallen off the bus.`) or the probe-time message, printed in three lines (osinit.c:
  `NVRM: The NVIDIA GPU %04x:%02x:%02x.%x` / `NVRM: (PCI ID: %04x:%04x) installed in this
  system has` / `NVRM: fallen off the bus and is not responding to commands.`). One printk:
  /dev/kmsg and dmesg keep it one record (joined by kernlog_formats), but whatever reads the
  kernel's syslog interface (rsyslog's imklog, `dmesg -S`) gets a record per line;
  `collect` joins consecutive ones, the address coming from the first;
- NVSwitch: `nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32 ...`, then,
  for an error the switch logs, `... 12028, Severity 0 Engine instance 32 Sub-engine
  instance 00` and `... 12028, Data {0x..., ...}` (error_nvswitch.c): those belong to the
  SXid above them (`collect` folds them in) and are no event of their own.
A line that says `NVRM: Xid` or `SXid` in a shape not listed here is returned as unparsed,
so that the check can say so instead of passing it over.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodecheck.probes.kernlog import LogRecord

XID_MARKS = (
    "NVRM: Xid",
    "SXid (",
    "fallen off the bus",
    # The first two lines of the probe-time "fallen off the bus" message carry none of the
    # marks above: where each line is a record of its own they must be kept to rebuild it.
    "NVRM: The NVIDIA GPU ",
    "NVRM: (PCI ID: ",
)
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
    r"GPU recovery action changed from 0x[0-9a-fA-F]+(?: \([^)]*\))? "
    r"to 0x(?P<code>[0-9a-fA-F]+)(?: \((?P<name>[^)]*)\))?"
)
_FALLEN = re.compile(
    r"NVRM: (?:The NVIDIA )?GPU (?:at )?(?:PCI:)?" + _PCI + r"\b.*?fallen off the bus"
)
_PCI_ID = r"\(PCI ID: [0-9a-fA-F]{4}:[0-9a-fA-F]{4}\)"
# The probe-time message's first record, and the records that continue it; a syslog line
# written through imklog keeps the kernel's `[  stamp] ` in front of each.
_OPENING = re.compile(
    rf"NVRM: The NVIDIA GPU {_PCI}(?: {_PCI_ID})?(?: installed in this system has)?\s*$"
)
_PIECE = re.compile(
    r"^(?:\[[^\]]*\] ?)?NVRM: (?P<piece>(?:" + _PCI_ID + r" )?installed in this system has"
    r"|fallen off the bus and is not responding to commands\.?)$"
)
_PIECES = 2  # after the opening record
# Kept records before the cursor that `collect` still reads: a message's earlier records and
# an SXid's own line come just before what continues them (other switches' lines may come
# between), so a few dozen suffice, and a node with thousands of Xids since boot does not
# parse them all again at every run.
_LOOKBACK = 32
_SXID = re.compile(
    r"nvidia-nvswitch(?P<switch>\d+): SXid \(PCI:" + _PCI + r"\): (?P<code>\d+)"
    r"(?:, (?P<sev>Non-fatal|Fatal))?(?:,?\s*(?P<rest>.*?))?\s*$"
)
# error_nvswitch.c prints these after the error's own line; NVSWITCH_ERROR_SEVERITY_NONFATAL
# is 0, NVSWITCH_ERROR_SEVERITY_FATAL 1.
_SXID_SEVERITY = re.compile(r"^Severity (?P<severity>\d+) Engine instance \d+ Sub-engine instance")
_SXID_DATA = re.compile(r"^Data \{")
_SEVERITY_FATAL = {0: False, 1: True}


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
    recovery_action: str = ""  # Xid 154: the new action's name as printed ("OS Reboot")
    switch: int | None = None  # SXid: the nvidia-nvswitchN number
    recovery_code: int | None = None  # Xid 154: the new action's code (0x2), what is judged


@dataclass(frozen=True)
class SxidDetail:
    """A follow-up line of an SXid (`Severity N Engine instance ...`, `Data {...}`)."""

    pos: int
    switch: int
    pci: str
    code: int
    fatal: bool | None  # from `Severity N`; None on a Data line
    text: str


def normal_pci(address: str) -> str:
    """'00000000:B3:00.0', '0000:b3:00' -> '0000:b3:00' (domain:bus:device)."""
    domain, bus, device = address.split(".")[0].lower().split(":")
    return f"{int(domain, 16):04x}:{bus}:{device}"


def parse_event(pos: int, text: str) -> GpuEvent | SxidDetail | str | None:
    """The event in one kernel message (or an SXid's follow-up line); None when it has none;
    the text itself when it names an Xid/SXid in a shape we do not know."""
    if "NVRM: Xid" in text:
        match = _XID.search(text)
        if match is None:
            return text
        return _xid_event(pos, match)
    if "SXid (" in text:
        match = _SXID.search(text)
        if match is None:
            return text
        return _sxid(pos, match)
    if "fallen off the bus" in text:
        if match := _FALLEN.search(text):
            return GpuEvent(
                pos,
                "fallen-off-bus",
                FALLEN_OFF_BUS_XID,
                normal_pci(match["pci"]),
                "GPU has fallen off the bus (no Xid line)",
            )
        if _PIECE.match(text):  # the last line of the message, its first not next to it
            return text
    return None


def _sxid(pos: int, match: re.Match[str]) -> GpuEvent | SxidDetail:
    rest = match["rest"] or ""
    switch, code, pci = int(match["switch"]), int(match["code"]), normal_pci(match["pci"])
    if match["sev"] is None:
        if severity := _SXID_SEVERITY.match(rest):
            fatal = _SEVERITY_FATAL.get(int(severity["severity"]))
            return SxidDetail(pos, switch, pci, code, fatal, rest)
        if _SXID_DATA.match(rest):
            return SxidDetail(pos, switch, pci, code, None, rest)
    fatal = None if match["sev"] is None else match["sev"] == "Fatal"
    return GpuEvent(pos, "sxid", code, pci, rest, fatal=fatal, switch=switch)


def collect(
    records: Sequence[LogRecord], after: int = -1
) -> tuple[list[GpuEvent], list[tuple[int, str]]]:
    """The events in kernel log records after position `after` (a cursor), and the
    (position, text) of the records there that name an Xid/SXid in a shape we do not know.
    A message printed over several records counts once, at its last record's position (a
    reader that stopped between its records sees it whole the next time); an SXid's
    follow-up lines are folded into the SXid they follow (its severity filling in one the
    SXid line did not give), also when that SXid was before the cursor."""
    first = next((at for at, record in enumerate(records) if record.pos > after), len(records))
    events, unparsed = _collect(records[max(0, first - _LOOKBACK) :])
    return [e for e in events if e.pos > after], [(p, t) for p, t in unparsed if p > after]


def _collect(records: Sequence[LogRecord]) -> tuple[list[GpuEvent], list[tuple[int, str]]]:
    events: list[GpuEvent] = []
    unparsed: list[tuple[int, str]] = []
    sxid_at: dict[tuple[int, str, int], int] = {}  # (switch, pci, code) -> index in events
    for pos, text in _joined(records):
        parsed = parse_event(pos, text)
        if isinstance(parsed, str):
            unparsed.append((pos, parsed))
        elif isinstance(parsed, SxidDetail):
            key = (parsed.switch, parsed.pci, parsed.code)
            if key in sxid_at:
                said = events[sxid_at[key]].fatal
                fatal = parsed.fatal if said is None else (said or parsed.fatal is True)
                events[sxid_at[key]] = replace(events[sxid_at[key]], fatal=fatal)
            elif parsed.fatal is not None:
                # Its SXid line is not in the log (overwritten, or before the first line
                # read): the severity still says an SXid happened and how bad it was.
                sxid_at[key] = len(events)
                events.append(
                    GpuEvent(
                        parsed.pos,
                        "sxid",
                        parsed.code,
                        parsed.pci,
                        parsed.text,
                        fatal=parsed.fatal,
                        switch=parsed.switch,
                    )
                )
        elif parsed is not None:
            if parsed.source == "sxid" and parsed.switch is not None:
                sxid_at[(parsed.switch, parsed.pci, parsed.code)] = len(events)
            events.append(parsed)
    return events, unparsed


def _joined(records: Sequence[LogRecord]) -> list[tuple[int, str]]:
    """(position, text) of each record, the probe-time "fallen off the bus" message joined
    when its lines are consecutive records of their own."""
    joined: list[tuple[int, str]] = []
    at = 0
    while at < len(records):
        first = records[at]
        taken = _pieces(records, at) if _OPENING.search(first.text) else []
        if taken:
            text = " ".join([first.text.rstrip(), *(piece for _, piece in taken)])
            joined.append((records[taken[-1][0]].pos, text))
            at = taken[-1][0] + 1
        else:
            joined.append((first.pos, first.text))
            at += 1
    return joined


def _pieces(records: Sequence[LogRecord], at: int) -> list[tuple[int, str]]:
    """(index, text) of the records that complete the message opened at `at`; empty unless
    its last line is among them."""
    pieces: list[tuple[int, str]] = []
    for index in range(at + 1, min(at + 1 + _PIECES, len(records))):
        if records[index].ordinal != records[index - 1].ordinal + 1:
            break
        piece = _PIECE.match(records[index].text)
        if piece is None:
            break
        pieces.append((index, piece["piece"]))
        if piece["piece"].startswith("fallen off the bus"):
            return pieces
    return []


def _xid_event(pos: int, match: re.Match[str]) -> GpuEvent:
    rest = _NOISE.sub("", match["rest"] or "").strip()
    fatal, unit, action, code = None, "", "", None
    if nvlink := _NVLINK5.match(rest):
        fatal, unit = nvlink["sev"] == "Fatal", nvlink["unit"]
    if recovery := _RECOVERY.search(rest):
        action, code = (recovery["name"] or "").strip(), int(recovery["code"], 16)
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
        recovery_code=code,
    )
