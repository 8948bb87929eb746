"""The kernel log, read without blocking, as (position, message) records for gpu.xid.

Sources: /dev/kmsg (one record per read(), never blocking), or a saved log in any format
`kernlog_formats` recognises (kmsg records, dmesg raw/-T/iso/--decode, syslog/kern.log,
journald short/short-iso). Imported only by the probe child that runs gpu.xid, not by the
prolog's parent process.

A node up for weeks has thousands of records and at most a few Xids, so `keep` lets the
caller say which messages it wants as text: the others are counted by position only, which
keeps the read close to the cost of the read() calls themselves.

Reading /dev/kmsg means reading every record from the oldest on (the device cannot seek to
a sequence number): one read() per record, thousands at every job start. The agent
(nodecheck.entry.agent) instead keeps the device open and follows it (`follow`): it reads
what is new before it forks each run, and the run's gpu.xid takes the log as read up to
that moment from memory. A record logged after the fork is the next run's to see.
"""

from __future__ import annotations

import bisect
import os
import re
import stat
import sys
from array import array
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
    # Which record of the log it is (the kmsg sequence number; a saved log's record index):
    # records kept apart by `keep` are next to each other in the log only when their
    # ordinals are, which wall-clock positions (equal within a second) cannot tell.
    ordinal: int


@dataclass(frozen=True)
class KernelLog:
    """What one read of the kernel log returned."""

    records: tuple[LogRecord, ...]  # the records asked for (all of them without `keep`)
    kind: str  # kmsg, dmesg, dmesg-ctime, iso, syslog; "" when no line was recognised
    positions: tuple[int, ...]  # the position of every record read, kept or not
    # /dev/kmsg overwrote records before we could read them (EPIPE): for each time, the
    # position of the first record read after the loss (sys.maxsize: none was).
    lost_before: tuple[int, ...] = ()
    lines: int = 0  # non-empty lines of a saved log (0 for the device)
    unrecognised_nvrm: tuple[str, ...] = ()  # lines naming NVRM that fit no format


def read_kernel_log(path: Path, keep: tuple[str, ...] | None = None) -> KernelLog:
    """Read the log at `path`; with `keep`, only records containing one of the marks are
    kept as text. A saved log's syslog stamps (no year) are placed before its mtime. The
    device followed by this process (or the one that forked it) is not read again: its
    records up to the last catch_up are."""
    if _followed is not None and _followed.path == Path(path) and _followed.keep == keep:
        if _adopt_on_read:
            _following_here()
        catch_up()  # only where it was opened: a run forked from it keeps its copy
        if _followed is not None:
            return _followed.log()
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
        records=tuple(
            LogRecord(r.pos, r.text, index)
            for index, r in enumerate(parsed.records)
            if r.text is not None
        ),
        kind=parsed.kind,
        positions=tuple(r.pos for r in parsed.records),
        lines=sum(1 for line in lines if line.strip()),
        unrecognised_nvrm=parsed.unrecognised_nvrm,
    )


def _read_kmsg_device(fd: int, keep: tuple[str, ...] | None) -> KernelLog:
    """One read() per record: `PRIO,SEQ,USEC,FLAGS;MESSAGE\\n` then optional ` KEY=value`
    continuation lines, up to the newest record. A long-lived node has thousands of records,
    so the loop does as little per record as it can: the sequence number, and one search
    for the marks."""
    records, positions, lost_before = [], [], []
    overrun = 0  # losses not yet placed: the next record read follows them
    wanted = re.compile(b"|".join(re.escape(mark.encode()) for mark in keep)) if keep else None
    while True:
        try:
            data = os.read(fd, 16384)
        except BlockingIOError:  # EAGAIN: no more records
            break
        except BrokenPipeError:  # EPIPE: the record we were at was overwritten
            overrun += 1
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
        if overrun:
            lost_before += [seq] * overrun
            overrun = 0
        if keep is None or (wanted is not None and wanted.search(data, semicolon)):
            message = data[semicolon + 1 :].split(b"\n", 1)[0].decode(errors="replace")
            records.append(LogRecord(seq, join_continuations(message), seq))
    lost_before += [sys.maxsize] * overrun
    return KernelLog(tuple(records), "kmsg", tuple(positions), tuple(lost_before))


class KmsgFollower:
    """/dev/kmsg held open by a long-lived process and read up to date on demand
    (`catch_up`); what a run needs of it is then a copy of memory (`log`). Only the process
    that opened it reads the device: a forked child inherits the records read so far, and
    its copy of the descriptor number may be closed or reused."""

    def __init__(self, path: Path, keep: tuple[str, ...]) -> None:
        self.path = path
        self.keep = keep
        self.owner = os.getpid()
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISCHR(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            raise OSError(f"{path} is not the kernel's log device")
        self._records: list[LogRecord] = []
        self._positions = array("q")
        self._lost_before: list[int] = []
        self.catch_up()

    def catch_up(self) -> None:
        """Read the records logged since the last call (in the process that follows)."""
        if os.getpid() != self.owner:
            return
        new = _read_kmsg_device(self._fd, self.keep)
        self._records += new.records
        self._positions.extend(new.positions)
        self._lost_before += new.lost_before
        # What the kernel has overwritten since is gone from a fresh read too.
        oldest = _oldest_position(self.path)
        if oldest is not None and self._positions and self._positions[0] < oldest:
            del self._positions[: bisect.bisect_left(self._positions, oldest)]
            self._records = [r for r in self._records if r.pos >= oldest]
            self._lost_before = [pos for pos in self._lost_before if pos >= oldest]

    def log(self) -> KernelLog:
        """The log as read by the last catch_up."""
        return KernelLog(
            tuple(self._records), "kmsg", tuple(self._positions), tuple(self._lost_before)
        )


def _oldest_position(path: Path) -> int | None:
    """The sequence number of the oldest record the kernel still holds (a fresh reader
    starts there), or None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        first = _read_one(fd)
    finally:
        os.close(fd)
    return first


def _read_one(fd: int) -> int | None:
    while True:
        try:
            data = os.read(fd, 16384)
        except BrokenPipeError:  # overwritten while we looked: the next one is the oldest
            continue
        except OSError:
            return None
        fields = data.split(b";", 1)[0].split(b",", 3)
        try:
            return int(fields[1]) if len(fields) == 4 else None
        except ValueError:
            return None


_followed: KmsgFollower | None = None
# In a long-lived process forked from the follower's (follow_here): follow the device with
# a descriptor of its own, from the first read on.
_adopt_on_read = False


def follow(path: Path, keep: tuple[str, ...]) -> None:
    """Keep following the kernel log device at `path` in this process (the agent's warm-up);
    read_kernel_log(path, keep) in this process and its forks then returns what it has read.
    OSError when the device cannot be opened (the runs then read it themselves)."""
    global _followed
    _followed = KmsgFollower(path, keep)


def follow_here() -> None:
    """In a long-lived process forked from the one that follows the device (the agent's
    probe pool, nodecheck.run.pool): from its first read of the device on, it follows it
    with a descriptor of its own and reads what was logged since its last read, where a
    run forked from the follower takes the log as it was at the fork. Only a process that
    reads the log pays for its first, whole read."""
    global _adopt_on_read
    _adopt_on_read = True


def _following_here() -> None:
    global _followed
    if _followed is not None and _followed.owner != os.getpid():
        try:
            _followed = KmsgFollower(_followed.path, _followed.keep)
        except OSError:
            _followed = None


def catch_up() -> None:
    """Read what the followed device logged since the last time (no-op without one). A
    device that fails to read is no longer followed: the runs read it themselves again."""
    global _followed
    if _followed is None:
        return
    try:
        _followed.catch_up()
    except OSError:
        _followed = None
