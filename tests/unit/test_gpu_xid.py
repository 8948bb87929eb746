"""gpu.xid: critical XIDs from the kernel log, each reported once (cursor per boot)."""

import os
import shutil
from pathlib import Path

import pytest
from helpers import NVML_FIXTURES, make_ctx, options_of

from nodecheck.checks.gpu import xid as gpu_xid
from nodecheck.checks.registry import all_checks
from nodecheck.probes.kernlog import XID_MARK, LogRecord, parse_xids, read_kernel_log
from nodecheck.run.results import Status

REGISTRY = all_checks()
BEFORE = NVML_FIXTURES / "kmsg-h100-before.txt"
AFTER = NVML_FIXTURES / "kmsg-h100-xid79.txt"
BOOT = "6b2a9cde-1f0e-4b36-9a0c-2d5e4f7a8b91\n"


@pytest.fixture
def node(tmp_path):
    """A procfs tree with a boot id and the driver's per-GPU information files."""
    proc = tmp_path / "proc"
    (proc / "sys" / "kernel" / "random").mkdir(parents=True)
    (proc / "sys" / "kernel" / "random" / "boot_id").write_text(BOOT)
    for minor, bus in enumerate(["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"]):
        d = proc / "driver" / "nvidia" / "gpus" / f"0000:{bus}:00.0"
        d.mkdir(parents=True)
        (d / "information").write_text(
            "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 0\n"
            f"Bus Location: \t 0000:{bus}:00.0\nDevice Minor: \t {minor}\n"
            "GPU Excluded:\t No\n"
        )
    log = tmp_path / "kmsg"
    return proc, log, tmp_path / "state"


def run(node, **options):
    proc, log, state = node
    chk = REGISTRY["gpu.xid"]
    opts = options_of(chk, kmsg=str(log), **options)
    ctx = make_ctx(options=opts, procfs_root=proc, state_dir=state)
    return list(chk.func(ctx))


def test_parse_real_xid_lines():
    records = [
        LogRecord(
            1,
            "NVRM: Xid (PCI:0000:9a:00): 79, pid='<unknown>', name=<unknown>, "
            "GPU has fallen off the bus.",
        ),
        LogRecord(
            2,
            "NVRM: Xid (PCI:0000:18:00): 13, pid=48213, name=python3, Graphics "
            "SM Warp Exception on (GPC 1, TPC 2, SM 0): Out Of Range Address",
        ),
        LogRecord(
            3,
            "NVRM: Xid (PCI:0000:3B:00): 48, An uncorrectable double bit error "
            "(DBE) has been detected on GPU in the framebuffer at partition 6.",
        ),
        LogRecord(4, "NVRM: GPU 0000:9a:00.0: GPU has fallen off the bus."),
    ]
    xids = parse_xids(records)
    assert [(x.xid, x.pci, x.text) for x in xids] == [
        (79, "0000:9a:00", "GPU has fallen off the bus."),
        (
            13,
            "0000:18:00",
            "Graphics SM Warp Exception on (GPC 1, TPC 2, SM 0): Out Of Range Address",
        ),
        (
            48,
            "0000:3b:00",
            "An uncorrectable double bit error (DBE) has been detected on GPU "
            "in the framebuffer at partition 6.",
        ),
    ]


def test_kmsg_file_format_skips_continuation_lines():
    log = read_kernel_log(AFTER)
    assert log.kind == "kmsg"
    assert [r.pos for r in log.records] == [0, 1204, 1209, 1297, 2871, 2872, 2873, 3107, 3108, 3109]


def test_new_critical_xid_fails_once(node):
    _, log, _ = node
    shutil.copy(BEFORE, log)
    [first] = run(node)
    assert first.status is Status.PASS
    assert first.message == "no critical XID since boot (2 other: Xid 13)"
    shutil.copy(AFTER, log)  # Xid 79 raised between two runs
    results = run(node)
    assert [(r.status, r.component, r.message) for r in results] == [
        (Status.FAIL, "gpu4", "Xid 79: GPU has fallen off the bus.")
    ]
    assert results[0].values == {"xids": [79, 154], "count": 2}
    # never reported twice
    [again] = run(node)
    assert again.status is Status.PASS and again.message == "no critical XID since last run"


def test_first_run_reports_everything_since_boot(node):
    _, log, _ = node
    shutil.copy(AFTER, log)
    assert run(node)[0].status is Status.FAIL


def test_new_boot_rescans_from_the_start(node):
    proc, log, _ = node
    shutil.copy(AFTER, log)
    assert run(node)[0].status is Status.FAIL
    assert run(node)[0].status is Status.PASS
    (proc / "sys" / "kernel" / "random" / "boot_id").write_text("another-boot\n")
    # after a reboot the sequence numbers start again: the same Xid text is a new event
    assert run(node)[0].status is Status.FAIL


def test_warn_list_and_custom_critical_list(node):
    _, log, _ = node
    shutil.copy(AFTER, log)
    results = run(node, critical=[48], warn=[79, 13])
    assert {(r.status, r.component, r.message) for r in results} == {
        (Status.WARN, "gpu4", "Xid 79: GPU has fallen off the bus."),
        (
            Status.WARN,
            "gpu0",
            "Xid 13: Graphics SM Warp Exception on (GPC 1, TPC 2, SM 0): "
            "Out Of Range Address (+1 more)",
        ),
    }


def test_unknown_pci_address_is_named(node):
    proc, log, _ = node
    shutil.rmtree(proc / "driver")
    shutil.copy(AFTER, log)
    [r] = run(node)
    assert (r.status, r.component) == (Status.FAIL, "pci0000:9a:00")


def test_dmesg_text_format(node):
    _, log, _ = node
    log.write_text(
        "[    0.000000] Linux version 6.1.0-21-amd64\n"
        "[86401.234567] NVRM: Xid (PCI:0000:18:00): 13, pid=48213, name=python3, Graphics "
        "Exception\n"
    )
    assert run(node)[0].status is Status.PASS
    with log.open("a") as fh:
        fh.write(
            "[90210.003311] NVRM: Xid (PCI:0000:ab:00): 94, pid=2001, name=train.py, "
            "Contained: SM (0x1). RST: No, D-RST: No\n"
        )
    [r] = run(node)
    assert (r.status, r.component) == (Status.FAIL, "gpu5")
    assert r.message == "Xid 94: Contained: SM (0x1). RST: No, D-RST: No"


def test_records_lost_between_runs_warn(node):
    _, log, _ = node
    shutil.copy(BEFORE, log)
    run(node)  # cursor at 2873
    log.write_text("4,3500,95000000000,-;usb 1-1: new high-speed USB device number 3\n")
    warn, ok = run(node)
    assert warn.status is Status.WARN and ok.status is Status.PASS
    assert (
        warn.message == "626 kernel log records lost before they were read: XIDs may have "
        "been missed"
    )


def test_unreadable_log_is_an_error_of_ours(node):
    _, log, _ = node
    [r] = run(node)  # the log file does not exist
    assert r.status is Status.ERROR and r.message.startswith(f"cannot read {log}: ")


@pytest.mark.skipif(not os.access("/dev/kmsg", os.R_OK), reason="/dev/kmsg not readable here")
def test_reading_dev_kmsg_does_not_block():
    log = read_kernel_log(Path("/dev/kmsg"))
    assert log.kind == "kmsg"
    assert log.records and all(isinstance(r.pos, int) for r in log.records)
    assert [r.pos for r in log.records] == log.positions


@pytest.mark.parametrize("source", [AFTER, Path("/dev/kmsg")], ids=["file", "device"])
def test_keep_only_drops_text_not_positions(source):
    """gpu.xid reads with keep=XID_MARK: the same positions as a full read, and exactly
    the records whose message carries the mark."""
    if not os.access(source, os.R_OK):
        pytest.skip(f"{source} not readable here")
    full = read_kernel_log(source)
    kept = read_kernel_log(source, keep=XID_MARK)
    # /dev/kmsg may grow between the two reads: compare the common part
    common = min(len(full.positions), len(kept.positions))
    assert kept.positions[:common] == full.positions[:common]
    last = kept.positions[common - 1] if common else -1
    assert [r for r in kept.records if r.pos <= last] == [
        r for r in full.records if XID_MARK in r.text and r.pos <= last
    ]
    assert len(full.records) == len(full.positions)


def test_xid_cursor_survives_in_state(node):
    from nodecheck.store.state import open_state

    _, log, state = node
    shutil.copy(AFTER, log)
    run(node)
    with open_state(state) as st:
        cursor = st.get_json(gpu_xid.XID_STATE_KEY)
    assert cursor == {"boot_id": BOOT.strip(), "source": str(log), "kind": "kmsg", "pos": 3109}
