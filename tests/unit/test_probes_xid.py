"""Driver Xid/SXid lines as published (tests/fixtures/real/xid) and the catalogue's verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodecheck.checks.gpu.xid_verdict import judge
from nodecheck.probes.kernlog import LogRecord
from nodecheck.probes.xid_catalogue import CATALOGUE
from nodecheck.probes.xid_lines import GpuEvent, SxidDetail, collect, parse_event

LINES = Path(__file__).parents[1] / "fixtures" / "real" / "xid" / "driver-lines.tsv"
REAL_KERNLOG = Path(__file__).parents[1] / "fixtures" / "real" / "kernlog"


def rows() -> list[list[str]]:
    text = LINES.read_text().splitlines()
    return [line.split("\t") for line in text if line and not line.startswith("#")]


def opt(value: str) -> str | None:
    return None if value == "-" else value


@pytest.mark.parametrize("row", rows(), ids=lambda row: row[-1][:60])
def test_every_published_driver_line(row: list[str]) -> None:
    source, code, pci, gi, ci, fatal, unit, recovery, message = row
    event = parse_event(7, message)
    if source == "sxid-detail":  # a follow-up line: part of the SXid above it, no event
        assert isinstance(event, SxidDetail)
        assert (event.code, event.pci) == (int(code), pci)
        assert event.fatal == ({"fatal": True, "nonfatal": False}.get(fatal))
        return
    assert isinstance(event, GpuEvent)
    assert (event.source, event.code, event.pci) == (source, int(code), pci)
    assert event.gpu_instance == (int(gi) if opt(gi) else None)
    assert event.compute_instance == (int(ci) if opt(ci) else None)
    assert event.fatal == ({"fatal": True, "nonfatal": False}.get(fatal))
    assert event.unit == (opt(unit) or "")
    action_code, _, action = (opt(recovery) or "").partition(" ")
    assert event.recovery_code == (int(action_code, 16) if action_code else None)
    assert event.recovery_action == action


@pytest.mark.parametrize(
    "message",
    ["NVRM: Xid error: xyz, invalid data", "NVRM: Xid (43, pid: 5678): ROBUST_CHANNEL"],
)
def test_xid_lines_in_unknown_shapes_are_returned_as_unparsed(message: str) -> None:
    assert parse_event(1, message) == message


def test_messages_without_events() -> None:
    assert parse_event(1, "NVRM: GPU at PCI:0000:9b:00: GPU-509665ad") is None
    assert parse_event(1, "NVRM: The NVIDIA probe routine failed for 1 device(s).") is None


def event(code: int, **fields) -> GpuEvent:
    return GpuEvent(1, "xid", code, "0000:01:00", "", **fields)


@pytest.mark.parametrize(
    "code", [46, 62, 64, 95, 109, 110, 119, 120, 136, 140, 143, 151, 155, 156, 158]
)
def test_catalogue_reset_codes_drain_for_a_gpu_reset(code: int) -> None:
    verdict = judge(event(code))
    assert (verdict.status, verdict.remedy) == ("fail", "reset-gpu")


def test_fallen_off_the_bus_needs_a_reboot() -> None:
    assert judge(event(79)).remedy == "reboot"
    no_xid_line = GpuEvent(1, "fallen-off-bus", 79, "0000:b3:00", "")
    assert (judge(no_xid_line).status, judge(no_xid_line).remedy) == ("fail", "reboot")


@pytest.mark.parametrize("code", [13, 31, 43, 45, 63, 92, 94])
def test_application_and_ignorable_codes_do_not_drain(code: int) -> None:
    assert judge(event(code)).status == "info"


def recovery_rows() -> list[list[str]]:
    return [row for row in rows() if row[1] == "154"]


@pytest.mark.parametrize("row", recovery_rows(), ids=lambda row: row[7])
def test_xid_154_is_judged_by_the_code_of_its_action_not_the_name(row: list[str]) -> None:
    """Driver branches print one code under several names: 0x1 is "GPU Reset Required"
    (R575/R580) and "PF FLR" (R595 and later), 0x2 "Node Reboot Required" and "OS Reboot"."""
    expected = {1: ("fail", "reset-gpu"), 2: ("fail", "reboot"), 4: ("fail", "reset-gpu")}
    found = parse_event(1, row[-1])
    assert isinstance(found, GpuEvent) and found.recovery_code is not None
    verdict = judge(found)
    assert (verdict.status, verdict.remedy) == expected[found.recovery_code]
    assert f"0x{found.recovery_code:x} (" in verdict.why
    assert f"printed as {found.recovery_action!r}" in verdict.why


# Xid 154's code under each driver branch's nvml.h (probes/recovery_action.py cites them):
# 5 is GPU_RESET_BUS in R580, undefined in R590, RECOVER_IMEX_DOMAIN from R595; 6 BUS_RESET
# and 7 SYSTEM_REBOOT from R615. None: the branch is unknown, 5 read the safe way (a reset).
BRANCH_VERDICTS = {
    # code: {branch: (status, remedy)}
    0: dict.fromkeys((None, 575, 580, 590, 595, 615), ("info", "")),
    1: dict.fromkeys((None, 575, 580, 590, 595, 615), ("fail", "reset-gpu")),
    2: dict.fromkeys((None, 575, 580, 590, 595, 615), ("fail", "reboot")),
    3: dict.fromkeys((None, 575, 580, 590, 595, 615), ("warn", "")),
    4: dict.fromkeys((None, 575, 580, 590, 595, 615), ("fail", "reset-gpu")),
    5: {
        None: ("fail", "reset-gpu"),
        575: ("warn", ""),  # not defined before R580
        580: ("fail", "reset-gpu"),  # GPU_RESET_BUS
        590: ("warn", ""),  # not in R590's header
        595: ("warn", ""),  # RECOVER_IMEX_DOMAIN: the domain, not this GPU
        615: ("warn", ""),
    },
    6: {
        None: ("fail", "reset-gpu"),
        575: ("warn", ""),
        580: ("warn", ""),
        590: ("warn", ""),
        595: ("warn", ""),
        615: ("fail", "reset-gpu"),  # BUS_RESET
    },
    7: {
        None: ("fail", "reboot"),
        575: ("warn", ""),
        580: ("warn", ""),
        590: ("warn", ""),
        595: ("warn", ""),
        615: ("fail", "reboot"),  # SYSTEM_REBOOT
    },
    9: dict.fromkeys((None, 575, 580, 590, 595, 615), ("warn", "")),
}


@pytest.mark.parametrize(
    ("code", "branch", "expected"),
    [
        (code, branch, expected)
        for code, by_branch in BRANCH_VERDICTS.items()
        for branch, expected in by_branch.items()
    ],
)
def test_xid_154_recovery_codes_by_driver_branch(
    code: int, branch: int | None, expected: tuple[str, str]
) -> None:
    found = event(154, recovery_action="whatever the branch calls it", recovery_code=code)
    verdict = judge(found, branch=branch)
    assert (verdict.status, verdict.remedy) == expected
    assert (f"driver R{branch}" if branch else "driver branch unknown") in verdict.why


def test_newer_branches_read_as_the_newest_table_and_older_ones_as_the_oldest() -> None:
    found = event(154, recovery_code=7)
    assert judge(found, branch=640).status == "fail"  # SYSTEM_REBOOT is still 7
    assert judge(event(154, recovery_code=4), branch=550).remedy == "reset-gpu"


def test_xid_154_without_an_action_code_warns() -> None:
    assert judge(event(154)).status == "warn"


@pytest.mark.parametrize("code", range(144, 151))
def test_nvlink5_fatal_drains_nonfatal_does_not(code: int) -> None:
    assert judge(event(code, fatal=True, unit="NETIR_LINK_EVT")).status == "fail"
    assert judge(event(code, fatal=False, unit="NETIR_BER_EVENT")).status == "info"
    assert judge(event(code)).status == "warn"


def test_sxid_fatal_drains_non_fatal_does_not() -> None:
    fatal = GpuEvent(1, "sxid", 20034, "0000:00:00", "", fatal=True, switch=0)
    benign = GpuEvent(1, "sxid", 12028, "0000:05:00", "", fatal=False, switch=3)
    assert judge(fatal).status == "fail" and judge(benign).status == "info"


def test_site_overrides_come_before_the_catalogue() -> None:
    assert judge(event(13), fail={13}).status == "fail"
    assert judge(event(13), fail={13}).remedy == "reset-gpu"
    assert judge(event(79), warn={79}).status == "warn"
    assert judge(event(46), ignore={46}).status == "info"


def test_codes_outside_the_catalogue_warn() -> None:
    assert 9 not in CATALOGUE  # "Unused" in the catalogue
    assert judge(event(9)).status == "warn"
    assert judge(event(999)).status == "warn"


def records(*texts: str) -> list[LogRecord]:
    return [LogRecord(pos, text, pos) for pos, text in enumerate(texts, 100)]


def test_sxid_follow_up_lines_belong_to_the_sxid_above_them() -> None:
    """NVIDIA's NVSwitch driver prints each error as its line, then `Severity N Engine
    instance ...` and `Data {...}` lines with the same SXid (Lambda's published dmesg)."""
    lines = (REAL_KERNLOG / "dmesg-sxid-22013-followups.txt").read_text().splitlines()
    found, odd = collect(records(*[line.split("] ", 1)[1] for line in lines]))
    assert odd == []
    assert [(e.source, e.code, e.switch, e.fatal) for e in found] == [("sxid", 22013, 3, False)] * 4
    assert [e.text for e in found] == [
        f"Link {link} Minion Link DLREQ interrupt" for link in (55, 54, 51, 50)
    ]
    assert [e.pos for e in found] == [100, 103, 106, 109]


def test_interleaved_switches_keep_their_own_follow_ups() -> None:
    """Three NVSwitches reporting at once (leptonai/gpud's SXid notes): each follow-up goes
    to its own switch's SXid; a Severity 1 line whose first line is not in the log still
    says a fatal SXid happened."""
    lines = (REAL_KERNLOG / "dmesg-sxid-20034-interleaved.txt").read_text().splitlines()
    found, odd = collect(records(*[line.split("] ", 1)[1] for line in lines]))
    assert odd == []
    sxids = [(e.switch, e.fatal, e.text) for e in found if e.source == "sxid"]
    assert sxids == [
        (1, True, "Link 48 LTSSM Fault Up"),
        (0, True, "Link 63 LTSSM Fault Up"),
        (2, True, "Severity 1 Engine instance 60 Sub-engine instance 00"),
        (2, True, "Link 37 LTSSM Fault Up"),
        (0, True, "Link 62 LTSSM Fault Up"),
    ]
    assert all(judge(e).status == "fail" for e in found)


def test_a_data_line_alone_is_no_event() -> None:
    """Its SXid line is not in the log (read from the middle, or overwritten): nothing."""
    lines = (REAL_KERNLOG / "dmesg-sxid-20034-interleaved.txt").read_text().splitlines()
    [data] = [line.split("] ", 1)[1] for line in lines if ", Data {" in line]
    assert collect(records(data)) == ([], [])
