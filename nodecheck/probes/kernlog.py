"""The kernel log, read without blocking, as (position, message) records for gpu.xid.

Sources: /dev/kmsg (one record per read(), never blocking), or a saved log in any format
`kernlog_formats` recognises (kmsg records, dmesg raw/-T/iso/--decode, syslog/kern.log,
journald short/short-iso). Imported only by the probe child that runs gpu.xid, not by the
prolog's parent process.

A node up for weeks has thousands of records and at most a few Xids, so `keep` lets the
caller say which messages it wants as text: the others are counted by position only, which
keeps the read close to the cost of the read() calls themselves.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nodecheck.probes.kernlog_formats import join_continuations, parse_lines

MAX_FILE_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class LogRecord:
    """One kernel log message and its position in the log."""

    pos: int  # kmsg sequence number, µs since boot (dmesg), or µs since the epoch
    text: str


@dataclass(frozen=True)
class KernelLog:
    """What one read of the kernel log returned."""

    records: tuple[LogRecord, ...]  # the records asked for (all of them without `keep`)
    kind: str  # kmsg, dmesg, dmesg-ctime, iso, syslog; "" when no line was recognised
    positions: tuple[int, ...]  # the position of every record read, kept or not
    lost: int = 0  # records overwritten before we could read them (/dev/kmsg EPIPE)
    lines: int = 0  # non-empty lines of a saved log (0 for the device)
    unrecognised_nvrm: tuple[str, ...] = ()  # lines naming NVRM that fit no format


def read_kernel_log(path: Path, keep: tuple[str, ...] | None = None) -> KernelLog:
    """Read the log at `path`; with `keep`, only records containing one of the marks are
    kept as text. A saved log's syslog stamps (no year) are placed before its mtime."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISCHR(info.st_mode):
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
    lines = b"".join(chunks).decode(errors="replace").splitlines()
    parsed = parse_lines(lines, datetime.fromtimestamp(info.st_mtime), keep)
    return KernelLog(
        records=tuple(LogRecord(r.pos, r.text) for r in parsed.records if r.text is not None),
        kind=parsed.kind,
        positions=tuple(r.pos for r in parsed.records),
        lines=sum(1 for line in lines if line.strip()),
        unrecognised_nvrm=parsed.unrecognised_nvrm,
    )


def _read_kmsg_device(fd: int, keep: tuple[str, ...] | None) -> KernelLog:
    """One read() per record: `PRIO,SEQ,USEC,FLAGS;MESSAGE\\n` then optional ` KEY=value`
    continuation lines. A long-lived node has thousands of records, so the loop does as
    little per record as it can: the sequence number, and one search for the marks."""
    records, positions, lost = [], [], 0
    wanted = re.compile(b"|".join(re.escape(mark.encode()) for mark in keep)) if keep else None
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
        semicolon = data.find(b";")
        fields = data[:semicolon].split(b",", 3)
        if semicolon < 0 or len(fields) < 4:
            continue
        try:
            seq = int(fields[1])
        except ValueError:
            continue
        positions.append(seq)
        if keep is None or (wanted is not None and wanted.search(data, semicolon)):
            message = data[semicolon + 1 :].split(b"\n", 1)[0].decode(errors="replace")
            records.append(LogRecord(seq, join_continuations(message)))
    return KernelLog(tuple(records), "kmsg", tuple(positions), lost)
