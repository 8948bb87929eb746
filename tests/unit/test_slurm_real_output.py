"""nodecheck reads node state as real Slurm releases print it.

Fixtures: tests/fixtures/real/slurm/<major.minor>/, real output of Debian's Slurm 22.05
(bookworm), 24.11 (trixie) and 26.05 (sid) captured from live clusters by
tools/slurm-roots/capture-slurm-output.py (see each SOURCE.md). The capture drained n1 with
nodecheck's reason, n2 with an admin's, n3 while a job ran on it, and left n4 idle.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nodecheck.core.node import NodeInfo
from nodecheck.slurm import SlurmError
from nodecheck.slurm.node_json import parse_node_json, scontrol_offers_json
from nodecheck.slurm.scontrol import parse_show_node

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "slurm"
# Release directories (22.05, 24.11 ...); topology/ holds topology files, not a release.
RELEASES = sorted(p.name for p in REAL.iterdir() if p.is_dir() and p.name[:1].isdigit())
JSON_RELEASES = [r for r in RELEASES if (REAL / r / "scontrol-json-show-node.json").exists()]

# The reasons the capture set (tools/slurm-roots/capture-slurm-output.py).
OURS = "nodecheck: gpu.ecc gpu3: 2 uncorrectable ECC errors (volatile DBE) [prolog job 4242]"
ADMIN = "RMA gpu3 ticket=1234: State=RESUME is not for you, ask ops"
ON_JOB = "nodecheck: ib.port mlx5_0/1: state 1: DOWN, phys_state 2: Polling [epilog job 7]"


def fixture(release: str, name: str) -> str:
    """A captured file without the '#' header the capture put on text files."""
    lines = (REAL / release / name).read_text().splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch):
    """The captures ran in UTC: JSON epochs then format as the text form printed them."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_all_three_releases_are_here():
    assert {"22.05", "24.11", "26.05"} <= set(RELEASES)
    assert {"24.11", "26.05"} <= set(JSON_RELEASES)


def _check_captured_states(nodes: list[NodeInfo]) -> None:
    by_name = {n.name: n for n in nodes}
    assert sorted(by_name) == ["n1", "n2", "n3", "n4"]
    n1, n2, n3, n4 = (by_name[k] for k in ("n1", "n2", "n3", "n4"))
    assert n1.states == ("IDLE", "DRAIN")
    assert n1.reason == OURS and n1.drained_by_nodecheck
    assert n1.reason_user == "root"
    assert len(n1.reason_time) == 19 and n1.reason_time[10] == "T"
    assert n2.reason == ADMIN and n2.drained and not n2.drained_by_nodecheck
    assert n3.states == ("ALLOCATED", "DRAIN")
    assert n3.reason == ON_JOB and n3.drained_by_nodecheck
    assert n4.states == ("IDLE",) and not n4.drained
    assert (n4.reason, n4.reason_user, n4.reason_time) == ("", "", "")
    assert all(n.partitions == ("debug",) for n in nodes)


@pytest.mark.parametrize("release", RELEASES)
def test_text_form_of_every_release(release: str):
    """24.05-24.11 print a whitespace-only line before Reason=: still one record per node."""
    _check_captured_states(parse_show_node(fixture(release, "scontrol-show-node.txt")))


@pytest.mark.parametrize("release", RELEASES)
def test_text_form_of_one_node(release: str):
    (n1,) = parse_show_node(fixture(release, "scontrol-show-node-n1.txt"))
    assert n1.name == "n1" and n1.reason == OURS and n1.drained_by_nodecheck


def test_the_24_11_quirk_is_in_the_real_output():
    """Guards the fixture itself: the line the old parser split records at."""
    text = fixture("24.11", "scontrol-show-node-n1.txt")
    lines = text.splitlines()
    reason_at = next(i for i, line in enumerate(lines) if line.strip().startswith("Reason="))
    assert lines[reason_at - 1].strip() == "" and lines[reason_at - 1] != ""


@pytest.mark.parametrize("release", JSON_RELEASES)
def test_scontrol_json_of_every_release(release: str):
    _check_captured_states(parse_node_json(fixture(release, "scontrol-json-show-node.json")))


@pytest.mark.parametrize("release", JSON_RELEASES)
def test_json_and_text_agree_field_for_field(release: str, utc):
    from_json = parse_node_json(fixture(release, "scontrol-json-show-node.json"))
    from_text = parse_show_node(fixture(release, "scontrol-show-node.txt"))
    assert from_json == from_text
    one_json = parse_node_json(fixture(release, "scontrol-json-show-node-n1.json"))
    assert one_json == parse_show_node(fixture(release, "scontrol-show-node-n1.txt"))


@pytest.mark.parametrize("release", JSON_RELEASES)
def test_json_for_an_unknown_node_is_empty(release: str):
    """Slurm answers exit 0, no nodes and a warning; the backend turns that into an error."""
    assert parse_node_json(fixture(release, "scontrol-json-show-node-unknown.json")) == []


def test_sinfo_json_of_22_05_has_base_state_and_flags_apart(utc):
    """22.05 has no `scontrol --json`; its `sinfo --json` (openapi v0.0.38) splits state."""
    from_sinfo = parse_node_json(fixture("22.05", "sinfo-json.json"))
    _check_captured_states(from_sinfo)
    assert from_sinfo == parse_show_node(fixture("22.05", "scontrol-show-node.txt"))


@pytest.mark.parametrize("release", RELEASES)
def test_json_capability_read_from_scontrol_help(release: str):
    has_json = (REAL / release / "scontrol-json-show-node.json").exists()
    assert scontrol_offers_json(fixture(release, "scontrol-help.txt")) is has_json


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "does not parse"),
        ('{"meta": {}}', "no 'nodes' list"),
        ('{"nodes": [], "errors": [{"description": "Unable to contact slurm controller"}]}',
         "Unable to contact"),
        ('{"nodes": [{"state": ["IDLE"]}]}', "without a name"),
    ],
)  # fmt: skip
def test_json_that_slurm_did_not_write_is_an_error(text: str, message: str):
    with pytest.raises(SlurmError, match=message):
        parse_node_json(text)
