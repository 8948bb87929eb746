"""The kernel log in the formats sites keep it in, turned into (position, message) records.

A saved log can be `/dev/kmsg` records, `dmesg` raw, `dmesg -T` (ctime), `dmesg --time-format
iso`, `dmesg --decode` (`kern  :warn  : [...]`), a syslog/kern.log file (traditional or
RFC 3339 stamps, as rsyslog writes them) or `journalctl -k` in its `short`, `short-precise`,
`short-iso` and `short-iso-precise` outputs. Each line is recognised on its own; the log's
kind is the format of its first recognised line, and positions are comparable only within
one kind (the gpu.xid cursor keeps the kind with the position).

Positions: the kmsg sequence number; microseconds since boot for dmesg with boot-relative
stamps; microseconds since the epoch for wall-clock stamps (a stamp without a zone is
taken as UTC: only order matters; a syslog stamp without a year gets the year that puts
it at or before the reference time, as rsyslog readers do).

A syslog or journal line from any program other than `kernel` is counted but its text is
never kept: `logger` lets any user write `NVRM: Xid ...` into syslog, and a user must not
be able to drain a node with it. Lines that fit no format are counted; the caller reports
an ERROR naming the file when such a line mentions NVRM (the driver said something we
could not place) or when nothing at all was recognised.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_MON = r"(?P<mon>[A-Za-z]{3})"
_HOST_TAG = r"(?P<host>\S+) (?P<tag>[^\s:\[]+)(?:\[\d+\])?: ?"
_KMSG = re.compile(r"^(?P<prio>\d+),(?P<seq>\d+),(?P<usec>\d+),[^;]*;(?P<msg>.*)$")
# dmesg raw (`-r` adds `<4>`) and `--decode` (`kern  :warn  : `) share the boot-relative stamp.
_DMESG = re.compile(
    r"^(?:<\d+>|[a-z]+ *:[a-z]+ *: )?\[\s*(?P<sec>\d+)\.(?P<frac>\d+)\] ?(?P<msg>.*)$"
)
_CTIME = re.compile(
    r"^(?:[a-z]+ *:[a-z]+ *: )?\[[A-Za-z]{3} "
    + _MON
    + r" +(?P<day>\d{1,2}) (?P<time>\d\d:\d\d:\d\d) (?P<year>\d{4})\] ?(?P<msg>.*)$"
)
_DATE_TIME = r"(?P<date>\d{4}-\d\d-\d\d)T(?P<time>\d\d:\d\d:\d\d)"
_ZONE = r"(?P<tz>Z|[+-]\d\d:?\d\d)?"
# dmesg's iso stamp always has `,microseconds`; rsyslog and journald use `.` or no fraction,
# which keeps a dmesg line like `Hardware name: ...` from reading as `host tag: message`.
_DMESG_ISO = re.compile(
    r"^(?:[a-z]+ *:[a-z]+ *: )?" + _DATE_TIME + r",(?P<frac>\d{1,9})" + _ZONE + r" (?P<msg>.*)$"
)
_SYSLOG_ISO = re.compile(
    r"^" + _DATE_TIME + r"(?:\.(?P<frac>\d{1,9}))?" + _ZONE + r" " + _HOST_TAG + r"(?P<msg>.*)$"
)
_SYSLOG = re.compile(
    r"^"
    + _MON
    + r" +(?P<day>\d{1,2}) (?P<time>\d\d:\d\d:\d\d)(?:\.(?P<frac>\d{1,9}))? "
    + _HOST_TAG
    + r"(?P<msg>.*)$"
)
_KMSG_DICT = re.compile(r"^ [A-Z_]+=")  # kmsg continuation lines: ` SUBSYSTEM=pci`


@dataclass(frozen=True)
class Record:
    """One kernel message: where it sits in the log and its text (None: not the kernel's)."""

    pos: int
    text: str | None


@dataclass(frozen=True)
class ParsedLog:
    """What a saved log held, format by format."""

    kind: str  # kmsg, dmesg, dmesg-ctime, iso, syslog; "" when nothing was recognised
    records: tuple[Record, ...]
    unrecognised: int  # non-empty lines that fit no format
    unrecognised_nvrm: tuple[str, ...]  # those among them that mention NVRM (first few)


def _usec(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _micro(frac: str | None) -> int:
    return int((frac or "0").ljust(6, "0")[:6])


def _zone(text: str | None) -> timezone | None:
    if not text:
        return None
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:4])))


def _iso_pos(match: re.Match[str]) -> int:
    moment = datetime.fromisoformat(f"{match['date']}T{match['time']}")
    moment = moment.replace(microsecond=_micro(match["frac"]), tzinfo=_zone(match["tz"]))
    return _usec(moment)


def _month(name: str) -> int | None:
    return MONTHS.get(name.lower())


def _syslog_pos(match: re.Match[str], reference: datetime) -> int | None:
    month = _month(match["mon"])
    if month is None:  # a localised month name (`Okt`, `6月`): not a format we can place
        return None
    hour, minute, second = map(int, match["time"].split(":"))
    for year in (reference.year, reference.year - 1):
        try:
            moment = datetime(year, month, int(match["day"]), hour, minute, second)
        except ValueError:  # 29 Feb in a year without one
            continue
        # A stamp more than a day after the reference belongs to the previous year.
        if moment <= reference.replace(tzinfo=None) + timedelta(days=1):
            return _usec(moment.replace(microsecond=_micro(match["frac"])))
    return None


def parse_line(line: str, reference: datetime) -> tuple[str, int, str | None] | None:
    """(kind, position, kernel message or None) for one line, or None if it fits no format."""
    if match := _KMSG.match(line):
        return "kmsg", int(match["seq"]), match["msg"]
    if match := _DMESG.match(line):
        return "dmesg", int(match["sec"]) * 1_000_000 + _micro(match["frac"]), match["msg"]
    if match := _CTIME.match(line):
        month = _month(match["mon"])
        if month is None:
            return None
        moment = datetime.strptime(
            f"{match['year']}-{month}-{match['day']} {match['time']}", "%Y-%m-%d %H:%M:%S"
        )
        return "dmesg-ctime", _usec(moment), match["msg"]
    if match := _DMESG_ISO.match(line):
        return "iso", _iso_pos(match), match["msg"]
    if match := _SYSLOG_ISO.match(line):
        return "syslog", _iso_pos(match), _kernel_text(match)
    if match := _SYSLOG.match(line):
        pos = _syslog_pos(match, reference)
        return None if pos is None else ("syslog", pos, _kernel_text(match))
    return None


def _kernel_text(match: re.Match[str]) -> str | None:
    return match["msg"] if match["tag"] == "kernel" else None


def join_continuations(text: str) -> str:
    """A printk with embedded newlines (the driver's multi-line 'fallen off the bus') as one
    line: /dev/kmsg escapes the newline as `\\x0a`, dmesg indents the following lines and
    repeats `NVRM: ` on them."""
    parts = text.replace("\\x0a", "\n").split("\n")
    if len(parts) == 1:
        return text
    rest = [re.sub(r"^NVRM:\s*", "", part.strip()) for part in parts[1:]]
    return " ".join([parts[0].rstrip(), *[part for part in rest if part]])


def parse_lines(
    lines: Iterable[str], reference: datetime, keep: str | tuple[str, ...] | None = None
) -> ParsedLog:
    """Records of every line in one saved log; with `keep` (a mark or several), only texts
    containing one of them are kept (the others keep their position). Continuation lines
    join their record first."""
    marks = (keep,) if isinstance(keep, str) else keep
    kind = ""
    records: list[Record] = []
    pending: tuple[int, list[str]] | None = None  # a record whose continuations may follow
    unrecognised, nvrm = 0, []

    def flush() -> None:
        if pending is None:
            return
        pos, pieces = pending
        text = join_continuations("\n".join(pieces)) if pieces else None
        if text is not None and marks is not None and not any(m in text for m in marks):
            text = None
        records.append(Record(pos, text))

    for line in lines:
        if not line.strip():
            continue
        if line[0].isspace():
            if _KMSG_DICT.match(line) or pending is None:
                continue
            if pending[1]:  # a continuation of a kernel message
                pending[1].append(line)
            continue
        parsed = parse_line(line, reference)
        if parsed is None or (kind and parsed[0] != kind):
            unrecognised += 1
            if "NVRM" in line and len(nvrm) < 5:
                nvrm.append(line[:200])
            continue
        flush()
        kind = parsed[0]
        pending = (parsed[1], [parsed[2]] if parsed[2] is not None else [])
    flush()
    return ParsedLog(kind, tuple(records), unrecognised, tuple(nvrm))
