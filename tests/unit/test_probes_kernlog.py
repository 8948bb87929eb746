"""The kernel-log reader on real logs in every format sites keep (tests/fixtures/real/kernlog)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from nodecheck.probes.kernlog import LogRecord, read_kernel_log
from nodecheck.probes.kernlog_formats import join_continuations, parse_line, parse_lines
from nodecheck.probes.xid_lines import XID_MARKS, GpuEvent, collect, parse_event

REAL = Path(__file__).parents[1] / "fixtures" / "real" / "kernlog"
REFERENCE = datetime(2026, 6, 30, 12, 0, 0)


def read(name: str, reference: datetime = REFERENCE):
    return parse_lines((REAL / name).read_text().splitlines(), reference, keep=None)


def events(name: str, reference: datetime = REFERENCE) -> list[GpuEvent]:
    found = []
    for record in read(name, reference).records:
        if record.text is not None:
            event = parse_event(record.pos, record.text)
            assert not isinstance(event, str), f"unparsed driver line: {event}"
            if event is not None:
                found.append(event)
    return found


# The same five Xid 119 records (a GSP timeout on one H100), in each format.
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("dmesg-ctime-xid119-gsp.txt", "dmesg-ctime"),
        ("dmesg-raw-xid119-gsp.txt", "dmesg"),
        ("dmesg-decode-xid119-gsp.txt", "dmesg"),
        ("dmesg-iso-xid119-gsp.txt", "iso"),
        ("journal-short-xid119-gsp.txt", "syslog"),
        ("journal-short-iso-xid119-gsp.txt", "syslog"),
        ("kmsg-xid119-gsp.txt", "kmsg"),
    ],
)
def test_five_xid_119_in_every_format(name: str, kind: str) -> None:
    log = read(name)
    assert log.kind == kind
    assert log.unrecognised == 0
    found = events(name)
    assert [(e.code, e.pci) for e in found] == [(119, "0000:9b:00")] * 5
    positions = [e.pos for e in found]
    assert positions == sorted(positions) and len(set(positions)) == 5


def test_wall_clock_formats_agree_on_when() -> None:
    """iso (UTC offset) and short-iso (+0000) stamps name the same instants."""
    iso = [e.pos // 1_000_000 for e in events("dmesg-iso-xid119-gsp.txt")]
    short_iso = [e.pos // 1_000_000 for e in events("journal-short-iso-xid119-gsp.txt")]
    assert iso == short_iso


def test_rfc3339_offsets_are_applied() -> None:
    parsed = parse_line("2026-06-01T15:55:06.218036+03:00 h kernel: NVRM: x", REFERENCE)
    assert parsed is not None
    assert parsed[1] == int(datetime(2026, 6, 1, 12, 55, 6).timestamp()) * 10**6 + 218036


def test_syslog_year_is_the_one_before_the_reference() -> None:
    """`Dec 31` read on 2 Jan is last year's, not a stamp eleven months ahead."""
    line = "Dec 31 23:59:59 h kernel: NVRM: x"
    parsed = parse_line(line, datetime(2027, 1, 2))
    assert parsed is not None
    assert datetime.fromtimestamp(parsed[1] // 10**6, UTC).year == 2026


def test_ctime_and_journal_logs_with_xid_79_and_154() -> None:
    assert [(e.source, e.code) for e in events("journal-short-xid79-154.txt")] == [
        ("xid", 79),
        ("xid", 154),
        ("xid", 79),
        ("fallen-off-bus", 79),
        ("xid", 154),
    ]
    rfc = events("syslog-rfc3339-xid79-154.txt")
    assert [e.recovery_action for e in rfc if e.code == 154] == ["Node Reboot Required"]


def test_multi_line_fallen_off_the_bus_without_xid() -> None:
    found = events("dmesg-fallen-off-multiline.txt")
    assert [(e.source, e.code, e.pci) for e in found] == [("fallen-off-bus", 79, "0000:b3:00")]


def test_kmsg_escaped_newline_is_joined() -> None:
    text = (
        "NVRM: The NVIDIA GPU 0000:b3:00.0\\x0a               NVRM: (PCI ID: 10de:26b5) "
        "installed in this system has\\x0a               NVRM: fallen off the bus and is "
        "not responding to commands."
    )
    joined = join_continuations(text)
    assert "NVRM: (PCI" not in joined and "has fallen off the bus" in joined


def test_lines_from_other_programs_are_never_read_as_kernel_messages() -> None:
    """`logger` lets any user write an Xid-looking line into syslog."""
    log = read("syslog-with-logger-forgery.txt")
    assert log.unrecognised == 0 and len(log.records) == 3
    assert [r.text is None for r in log.records] == [False, True, True]
    assert events("syslog-with-logger-forgery.txt") == []


def test_localised_month_names_are_reported_not_skipped() -> None:
    log = read("journal-localised-month.txt")
    assert log.records == () and log.unrecognised == 2
    assert len(log.unrecognised_nvrm) == 2


def test_other_xids_and_contexts_in_real_logs() -> None:
    assert [e.code for e in events("dmesg-ctime-xid13-109.txt")] == [13, 13, 13, 109]
    assert [e.code for e in events("dmesg-ctime-xid94.txt")] == [43, 43, 31, 94]
    assert {e.pci for e in events("kern-log-xid45-after-149.txt")} == {
        "0000:dc:00",
        "0000:ed:00",
        "0000:ba:00",
        "0000:97:00",
    }


def test_keep_drops_other_texts_but_keeps_positions() -> None:
    lines = (REAL / "dmesg-ctime-xid119-gsp.txt").read_text().splitlines()
    log = parse_lines(lines, REFERENCE, keep="NVRM: Xid")
    assert len(log.records) == len(lines)
    assert sum(r.text is not None for r in log.records) == 5


# The probe-time "fallen off the bus" message where each of its lines is a record of its own:
# rsyslog's kern.log as published, and the same records in the other formats.
SPLIT = [
    ("syslog-fallen-off-split.txt", "syslog"),
    ("dmesg-fallen-off-split.txt", "dmesg"),
    ("journal-short-fallen-off-split.txt", "syslog"),
    ("kmsg-fallen-off-split.txt", "kmsg"),
]


@pytest.mark.parametrize(("name", "kind"), SPLIT)
def test_fallen_off_the_bus_in_one_record_per_line(name: str, kind: str) -> None:
    """The driver prints `NVRM: The NVIDIA GPU 0000:5d:00.0` / `NVRM: (PCI ID: 10de:2330)
    installed in this system has` / `NVRM: fallen off the bus and is not responding to
    commands.`; the reader keeps the lines needed to rebuild it (gpu.xid reads with
    keep=XID_MARKS) and the GPU's address comes from the first."""
    log = read_kernel_log(REAL / name, keep=XID_MARKS)
    assert log.kind == kind
    found, odd = collect(log.records)
    assert odd == []
    assert [(e.source, e.code, e.pci) for e in found] == [("fallen-off-bus", 79, "0000:5d:00")]
    last_piece = [r.pos for r in log.records if "fallen off the bus" in r.text]
    assert found[0].pos == last_piece[-1]  # a cursor between the pieces still sees it


def test_pieces_with_another_record_between_them_are_not_joined() -> None:
    """Only consecutive records are one message: the probe's own next line, moved between
    the second and third piece, breaks it (the third piece alone is reported, not lost)."""
    lines = (REAL / "syslog-fallen-off-split.txt").read_text().splitlines()
    lines.insert(4, lines.pop(5))  # `nvidia: probe of 0000:5d:00.0 failed ...`
    parsed = parse_lines(lines, REFERENCE, keep=XID_MARKS)
    kept = [LogRecord(r.pos, r.text, i) for i, r in enumerate(parsed.records) if r.text]
    found, odd = collect(kept)
    assert found == []
    assert [text.split("] ", 1)[1] for _, text in odd] == [
        "NVRM: fallen off the bus and is not responding to commands."
    ]


def test_each_piece_alone_is_no_event() -> None:
    lines = (REAL / "kmsg-fallen-off-split.txt").read_text().splitlines()
    for line in lines[2:4]:  # the first two pieces carry no "fallen off the bus"
        assert parse_event(1, line.split(";", 1)[1]) is None
