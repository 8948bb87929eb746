"""Driver Xid/SXid lines as published (tests/fixtures/real/xid) and the catalogue's verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodecheck.probes.xid_catalogue import CATALOGUE, judge
from nodecheck.probes.xid_lines import GpuEvent, parse_event

LINES = Path(__file__).parents[1] / "fixtures" / "real" / "xid" / "driver-lines.tsv"


def rows() -> list[list[str]]:
    text = LINES.read_text().splitlines()
    return [line.split("\t") for line in text if line and not line.startswith("#")]


def opt(value: str) -> str | None:
    return None if value == "-" else value


@pytest.mark.parametrize("row", rows(), ids=lambda row: row[-1][:60])
def test_every_published_driver_line(row: list[str]) -> None:
    source, code, pci, gi, ci, fatal, unit, recovery, message = row
    event = parse_event(7, message)
    assert isinstance(event, GpuEvent)
    assert (event.source, event.code, event.pci) == (source, int(code), pci)
    assert event.gpu_instance == (int(gi) if opt(gi) else None)
    assert event.compute_instance == (int(ci) if opt(ci) else None)
    assert event.fatal == ({"fatal": True, "nonfatal": False}.get(fatal))
    assert event.unit == (opt(unit) or "")
    assert event.recovery_action == (opt(recovery) or "")


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


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("Node Reboot Required", ("fail", "reboot")),
        ("GPU Reset Required", ("fail", "reset-gpu")),
        ("Drain and Reset", ("fail", "reset-gpu")),
        ("Drain P2P", ("warn", "")),
        ("None", ("info", "")),
    ],
)
def test_xid_154_follows_its_recovery_action(action: str, expected: tuple[str, str]) -> None:
    verdict = judge(event(154, recovery_action=action))
    assert (verdict.status, verdict.remedy) == expected


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
