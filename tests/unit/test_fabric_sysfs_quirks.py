"""Real sysfs quirks (tests/fixtures/real/sysfs/ib-quirks.toml, each case names its source):
devices without a PMA, a rate that cannot be read, rate strings as real HCAs print them."""

from __future__ import annotations

import errno
import os
import tomllib
from pathlib import Path

import pytest
from helpers import make_ctx, options_of

import nodecheck.checks.fabric  # noqa: F401  (registers the fabric checks)
from nodecheck.checks.context import JobInfo
from nodecheck.checks.registry import all_checks
from nodecheck.core.results import Status
from nodecheck.probes.fabric import sysfs
from tests.fixtures.sysfs import IB_COUNTERS, FakeSysfs

QUIRKS = tomllib.loads(
    (Path(__file__).resolve().parents[1] / "fixtures/real/sysfs/ib-quirks.toml").read_text()
)
REGISTRY = all_checks()


def run(check_id: str, root: Path, phase: str, state_dir: Path, **options):
    chk = REGISTRY[check_id]
    ctx = make_ctx(
        phase=phase,
        options=options_of(chk, **options),
        job=JobInfo(job_id="812", uid=1000, user="alice"),
        sysfs_root=root,
        state_dir=state_dir,
    )
    return list(chk.func(ctx))


def fail_reads(monkeypatch: pytest.MonkeyPatch, part: str, code: int) -> None:
    """Reads of files whose path contains `part` fail with errno `code`, as the kernel's
    show function returning -code makes read(2) fail. (A plain file cannot be made to fail
    with ENOSYS or EINVAL, so the reader is wrapped; everything else reads the tree.)"""
    real = sysfs.read_attr

    def read_attr(path: Path):
        if part in str(path):
            return sysfs._failure(path, OSError(code, os.strerror(code)))
        return real(path)

    monkeypatch.setattr(sysfs, "read_attr", read_attr)


def build(tmp_path: Path, case: dict) -> tuple[FakeSysfs, Path]:
    fake = FakeSysfs(tmp_path / "sys")
    fake.add_hca(case["device"], link_layer=case["link_layer"])
    port_dir = fake.port_path(case["device"], 1)
    fake.set_port(
        case["device"], 1,
        **{k: case[k] for k in ("state", "phys_state", "rate") if k in case},
    )  # fmt: skip
    return fake, port_dir


@pytest.mark.parametrize("case", QUIRKS["case"], ids=lambda c: c["name"])
def test_counters_without_a_pma_are_unavailable_not_an_error(tmp_path, monkeypatch, case):
    fake, port_dir = build(tmp_path, case)
    if case["counters"] == "text":
        for name in IB_COUNTERS:
            (port_dir / "counters" / name).write_text(case["counters_text"] + "\n")
    elif case["counters"] == "absent":
        for path in (port_dir / "counters").iterdir():
            path.unlink()
        (port_dir / "counters").rmdir()
    else:
        fail_reads(monkeypatch, "/counters/", getattr(errno, case["counters_errno"]))
    # Not mlx5: no mlx5 hw_counters either (those are absent, as on these devices).
    for path in (port_dir / "hw_counters").iterdir():
        path.unlink()
    name = f"{case['device']}/1"
    # Every run, not only the first (the baseline run): prolog, then the job's epilog.
    for phase in ("prolog", "epilog"):
        results = run("ib.counters", fake.root, phase, tmp_path / "state")
        assert [r.component for r in results] == [name], results
        (result,) = results
        assert result.status is Status.SKIP, result
        assert "counters unavailable" in result.message
        assert result.severity == "" and result.remedy == ""


def test_a_device_with_some_counters_still_judges_those(tmp_path, monkeypatch):
    """PMA counters unavailable but the driver's hw_counters readable: judged as usual."""
    case = next(c for c in QUIRKS["case"] if c["counters"] == "text")
    fake, port_dir = build(tmp_path, case)
    for name in IB_COUNTERS:
        (port_dir / "counters" / name).write_text(case["counters_text"] + "\n")
    state = tmp_path / "state"
    options = {"hw_counters": ["rx_icrc_encapsulated"]}
    (first,) = run("ib.counters", fake.root, "prolog", state, **options)
    fake.bump_counter(case["device"], 1, "rx_icrc_encapsulated", 500, hw=True)
    (second,) = run("ib.counters", fake.root, "epilog", state, **options)
    assert first.status is Status.PASS
    assert second.status is Status.FAIL and "rx_icrc_encapsulated +500" in second.message
    assert "unavailable" in second.values


@pytest.mark.parametrize("case", QUIRKS["port_case"], ids=lambda c: c["name"])
def test_a_down_port_is_judged_by_its_state_whatever_its_rate(tmp_path, monkeypatch, case):
    fake, _ = build(tmp_path, case)
    if "rate_errno" in case:
        fail_reads(monkeypatch, "/ports/1/rate", getattr(errno, case["rate_errno"]))
    name = f"{case['device']}/1"
    (result,) = run("ib.port", fake.root, "prolog", tmp_path / "state", ports=[name])
    assert result.status is Status.FAIL
    assert result.message.startswith(case["expect_message"]), result.message


@pytest.mark.parametrize("rate", QUIRKS["rate"], ids=lambda r: r["text"])
def test_real_rate_strings(rate):
    parsed = sysfs.parse_rate(rate["text"])
    assert parsed == sysfs.Rate(rate["gbps"], rate["width"], rate["speed"])
    assert str(parsed) == rate["text"]


def test_net_link_on_this_machines_real_loopback(tmp_path):
    """The real /sys of the machine running the tests: `lo` has operstate "unknown" (its
    driver does not track it), carrier 1, and its speed read fails with EINVAL (no
    get_link_ksettings). Up with an unknown speed: PASS, and WARN where a speed is expected."""
    lo = Path("/sys/class/net/lo")
    if not lo.is_dir():
        pytest.skip("no /sys/class/net/lo here")
    assert sysfs.read_attr(lo / "operstate") == "unknown"
    speed = sysfs.read_int(lo / "speed")
    assert isinstance(speed, sysfs.ReadFailure) and speed.errno == errno.EINVAL
    (plain,) = run("net.link", Path("/sys"), "prolog", tmp_path / "state", devices=["lo"])
    assert plain.status is Status.PASS and plain.message == "up, speed unknown"
    (expected,) = run(
        "net.link", Path("/sys"), "prolog", tmp_path / "state", devices=["lo"], speed=100000
    )
    assert expected.status is Status.WARN
    assert expected.message == "speed unknown, expected 100000 Mb/s"
