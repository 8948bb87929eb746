"""The kernel log, read without blocking, and the NVIDIA XID lines in it (for gpu.xid).

Sources: /dev/kmsg (one record per read(), never blocking), or a saved file in kmsg or
dmesg text format (tests, or sites that point gpu.xid at a log copy). Imported only by
the probe child that runs gpu.xid, not by the prolog's parent process.

A node up for weeks has thousands of records and at most a few XIDs, so `keep` lets the
caller say which messages it wants as text: the others are counted by position only, which
keeps the read close to the cost of the read() calls themselves.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

XID_MARK = "NVRM: Xid"
# Patterns, compiled on first use (re caches them): a kmsg read that finds no XID line
# compiles none.
_XID = (
    r"NVRM: Xid \(PCI:(?P<pci>[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:\.[0-7])?\): "
    r"(?P<xid>\d+),\s*(?P<rest>.*)"
)
_XID_NOISE = r"^(?:pid=[^,]*,\s*)?(?:name=[^,]*,\s*)?"
_KMSG = r"^(?P<prio>\d+),(?P<seq>\d+),(?P<usec>\d+),[^;]*;(?P<msg>.*)$"
_DMESG = r"^\[\s*(?P<sec>\d+)\.(?P<frac>\d+)\]\s?(?P<msg>.*)$"
MAX_FILE_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class LogRecord:
    """One kernel log message and its position in the log."""

    pos: int  # kmsg sequence number, or microseconds since boot for dmesg text
    text: str


@dataclass(frozen=True)
class KernelLog:
    """What one read of the kernel log returned."""

    records: list[LogRecord]  # the records asked for (all of them without `keep`)
    kind: str  # "kmsg" or "dmesg"
    positions: list[int]  # the position of every record read, kept or not
    lost: int = 0  # records overwritten before we could read them (/dev/kmsg EPIPE)


def read_kernel_log(path: Path, keep: str | None = None) -> KernelLog:
    """Read the log at `path`; with `keep`, only records containing it are kept as text."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if stat.S_ISCHR(os.fstat(fd).st_mode):
            return _read_kmsg_device(fd, keep)
        chunks, size = [], 0
        while size < MAX_FILE_BYTES:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return _parse_log_text(b"".join(chunks).decode(errors="replace"), keep)


def _read_kmsg_device(fd: int, keep: str | None) -> KernelLog:
    """One read() per record: `PRIO,SEQ,USEC,FLAGS;MESSAGE\\n` then optional ` KEY=value`
    continuation lines."""
    records, positions, lost = [], [], 0
    wanted = keep.encode() if keep is not None else None
    while True:
        try:
            data = os.read(fd, 16384)
        except BlockingIOError:  # EAGAIN: no more records
            break
        except BrokenPipeError:  # EPIPE: the record we were at was overwritten
            lost += 1
            continue
        if not data:
            break
        head, semicolon, body = data.partition(b";")
        fields = head.split(b",", 3)
        if not semicolon or len(fields) < 4:
            continue
        try:
            seq = int(fields[1])
        except ValueError:
            continue
        positions.append(seq)
        if wanted is None or wanted in body:
            message = body.split(b"\n", 1)[0].decode(errors="replace")
            records.append(LogRecord(seq, message))
    return KernelLog(records, "kmsg", positions, lost)


def _parse_log_text(text: str, keep: str | None) -> KernelLog:
    records: list[LogRecord] = []
    positions: list[int] = []
    kind = ""
    for line in text.splitlines():
        if not line or line[0].isspace():  # kmsg continuation (KEY=value) lines
            continue
        if (match := re.match(_KMSG, line)) and kind in ("", "kmsg"):
            kind = "kmsg"
            pos = int(match["seq"])
        elif (match := re.match(_DMESG, line)) and kind in ("", "dmesg"):
            kind = "dmesg"
            pos = int(match["sec"]) * 1_000_000 + int(match["frac"].ljust(6, "0")[:6])
        else:
            continue
        positions.append(pos)
        if keep is None or keep in match["msg"]:
            records.append(LogRecord(pos, match["msg"]))
    return KernelLog(records, kind or "kmsg", positions)


@dataclass(frozen=True)
class Xid:
    """One NVIDIA XID message: the number, the GPU's PCI address, the text."""

    pos: int
    xid: int
    pci: str  # domain:bus:device as the driver prints it, e.g. 0000:9a:00
    text: str


def parse_xids(records: Iterable[LogRecord]) -> list[Xid]:
    out = []
    for record in records:
        match = re.search(_XID, record.text)
        if match:
            text = re.sub(_XID_NOISE, "", match["rest"]).strip()
            out.append(Xid(record.pos, int(match["xid"]), match["pci"].lower(), text))
    return out
