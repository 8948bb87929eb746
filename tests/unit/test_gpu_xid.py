"""gpu.xid: Xids from the kernel log judged by NVIDIA's catalogue, each reported once (cursor
per boot, moved only by hook runs), GPUs named by NVML index."""

import os
import shutil
import socket
import stat
from pathlib import Path

import pytest
from helpers import NVML_FIXTURES, make_ctx, options_of

from nodecheck.checks.gpu import xid as gpu_xid
from nodecheck.checks.registry import all_checks
from nodecheck.core.results import Status
from nodecheck.probes import kernlog
from nodecheck.probes.kernlog import read_kernel_log
from nodecheck.probes.xid_lines import XID_MARKS
from nodecheck.store.state import open_state

REGISTRY = all_checks()
BEFORE = NVML_FIXTURES / "kmsg-h100-before.txt"
AFTER = NVML_FIXTURES / "kmsg-h100-xid79.txt"
REAL = Path(__file__).parents[1] / "fixtures" / "real" / "kernlog"
BOOT = "6b2a9cde-1f0e-4b36-9a0c-2d5e4f7a8b91\n"
H100_BUSES = ["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"]


def driver_gpus(proc: Path, minors_by_bus: dict[str, int], excluded: set[str] = frozenset()):
    """/proc/driver/nvidia/gpus as the driver writes it (the `information` file's fields)."""
    for bus, minor in minors_by_bus.items():
        d = proc / "driver" / "nvidia" / "gpus" / f"0000:{bus}:00.0"
        d.mkdir(parents=True)
        (d / "information").write_text(
            "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 0\n"
            f"Bus Location: \t 0000:{bus}:00.0\nDevice Minor: \t {minor}\n"
            f"GPU Excluded:\t {'Yes' if bus in excluded else 'No'}\n"
        )


@pytest.fixture
def node(tmp_path):
    """A procfs tree with a boot id and the driver's per-GPU information files."""
    proc = tmp_path / "proc"
    (proc / "sys" / "kernel" / "random").mkdir(parents=True)
    (proc / "sys" / "kernel" / "random" / "boot_id").write_text(BOOT)
    driver_gpus(proc, {bus: minor for minor, bus in enumerate(H100_BUSES)})
    log = tmp_path / "kmsg"
    return proc, log, tmp_path / "state"


def run(node, phase="prolog", **options):
    proc, log, state = node
    chk = REGISTRY["gpu.xid"]
    opts = options_of(chk, kmsg=str(log), **options)
    ctx = make_ctx(phase=phase, options=opts, procfs_root=proc, state_dir=state)
    return list(chk.func(ctx))


def test_kmsg_file_format_skips_continuation_lines():
    log = read_kernel_log(AFTER)
    assert log.kind == "kmsg"
    assert [r.pos for r in log.records] == [0, 1204, 1209, 1297, 2871, 2872, 2873, 3107, 3108, 3109]


def test_new_xid_needing_a_reboot_fails_once(node):
    _, log, _ = node
    shutil.copy(BEFORE, log)
    [first] = run(node)
    # Xid 13 is the application's own fault in NVIDIA's catalogue (RESTART_APP): recorded
    assert first.status is Status.PASS
    assert first.message == "no Xid needing action since boot (2 recorded: Xid 13)"
    shutil.copy(AFTER, log)  # Xid 79, the one-line "fallen off the bus" and Xid 154
    [result] = run(node)
    assert (result.status, result.component, result.remedy) == (Status.FAIL, "gpu4", "reboot")
    assert result.message == "Xid 79: GPU has fallen off the bus. (+2 more)"
    assert result.values["xids"] == [79, 154] and result.values["count"] == 3
    [again] = run(node)  # never reported twice
    assert again.status is Status.PASS and again.message == "no Xid needing action since last run"


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


def test_manual_run_does_not_move_the_cursor(node):
    """`nodecheck run` looks at what the hooks have not seen yet and leaves it for them."""
    _, log, state = node
    shutil.copy(AFTER, log)
    assert run(node, phase="manual")[0].status is Status.FAIL
    assert run(node, phase="manual")[0].status is Status.FAIL
    with open_state(state) as st:
        assert st.get_json(gpu_xid.XID_STATE_KEY) is None
    assert run(node, phase="epilog")[0].status is Status.FAIL  # the hook still sees it
    assert run(node, phase="manual")[0].status is Status.PASS


def test_overrides_win_over_the_catalogue(node):
    _, log, _ = node
    shutil.copy(AFTER, log)
    results = run(node, critical=[13], warn=[79], ignore=[154])
    assert {(r.status, r.component, r.message) for r in results} == {
        (Status.WARN, "gpu4", "Xid 79: GPU has fallen off the bus. (+1 more)"),
        (
            Status.FAIL,
            "gpu0",
            "Xid 13: Graphics SM Warp Exception on (GPC 1, TPC 2, SM 0): "
            "Out Of Range Address (+1 more)",
        ),
    }


def test_ignore_list_silences_a_catalogue_drain(node):
    _, log, _ = node
    shutil.copy(AFTER, log)
    [r] = run(node, ignore=[79, 154])
    assert r.status is Status.PASS and r.values["other_xids"] == [13, 79, 154]


def test_unknown_pci_address_is_named(node):
    proc, log, _ = node
    shutil.rmtree(proc / "driver")
    shutil.copy(AFTER, log)
    [r] = run(node)
    assert (r.status, r.component) == (Status.FAIL, "pci0000:9a:00")


def test_gpus_are_named_by_nvml_index_not_device_minor(tmp_path):
    """Device minors follow the driver's probe order; NVML, nvidia-smi and SLURM_JOB_GPUS
    number GPUs in PCI bus order. A real 8x RTX 4090 box (tests/fixtures/real/nvidia-smi/
    rtx4090-550.txt): 01:00.0 is index 0 with minor 3, 25:00.0 index 1 with minor 2."""
    proc = tmp_path / "proc"
    (proc / "sys" / "kernel" / "random").mkdir(parents=True)
    (proc / "sys" / "kernel" / "random" / "boot_id").write_text(BOOT)
    driver_gpus(proc, {"01": 3, "25": 2})
    log = tmp_path / "kmsg"
    log.write_text(
        "4,10,5000000,-;NVRM: Xid (PCI:0000:25:00): 79, pid='<unknown>', name=<unknown>, "
        "GPU has fallen off the bus.\n"
    )
    [r] = run((proc, log, tmp_path / "state"))
    assert (r.status, r.component) == (Status.FAIL, "gpu1")  # not gpu2 (its minor)


def test_excluded_gpu_takes_no_index(tmp_path):
    proc = tmp_path / "proc"
    (proc / "sys" / "kernel" / "random").mkdir(parents=True)
    driver_gpus(proc, {"18": 0, "2a": 1, "3a": 2}, excluded={"18"})
    log = tmp_path / "kmsg"
    log.write_text("4,10,5000000,-;NVRM: Xid (PCI:0000:3a:00): 79, GPU has fallen off the bus.\n")
    [r] = run((proc, log, tmp_path / "state"))
    assert r.component == "gpu1"


@pytest.mark.parametrize(
    "name",
    [
        "dmesg-ctime-xid119-gsp.txt",
        "dmesg-raw-xid119-gsp.txt",
        "dmesg-decode-xid119-gsp.txt",
        "dmesg-iso-xid119-gsp.txt",
        "journal-short-xid119-gsp.txt",
        "journal-short-iso-xid119-gsp.txt",
        "kmsg-xid119-gsp.txt",
    ],
)
def test_five_gsp_timeouts_fail_in_every_log_format(node, name):
    """Issue 14: a node with five Xid 119 lines passed when the log was not kmsg/dmesg."""
    _, log, _ = node
    shutil.copy(REAL / name, log)
    results = run(node)
    fails = [r for r in results if r.status is Status.FAIL]
    assert [(r.component, r.values["count"], r.values["xids"]) for r in fails] == [
        ("pci0000:9b:00", 5, [119])
    ]
    assert fails[0].message.startswith("Xid 119: Timeout after 6s of waiting for RPC response")
    assert run(node)[0].status is Status.PASS  # the cursor works in this format too


def test_syslog_file_fails_on_xid_79_and_154_but_not_on_a_forged_line(node):
    _, log, _ = node
    shutil.copy(REAL / "syslog-rfc3339-xid79-154.txt", log)
    assert {(r.status, r.remedy) for r in run(node)} == {(Status.FAIL, "reboot")}
    shutil.copy(REAL / "syslog-with-logger-forgery.txt", log)
    (log.parent / "state").exists() and shutil.rmtree(log.parent / "state")
    [r] = run(node)
    assert r.status is Status.PASS  # `logger` wrote those lines, not the kernel


def test_fallen_off_the_bus_without_an_xid_line_fails(node):
    _, log, _ = node
    shutil.copy(REAL / "dmesg-fallen-off-multiline.txt", log)
    fails = [r for r in run(node) if r.status is Status.FAIL]
    assert [(r.message, r.remedy) for r in fails] == [
        ("Xid 79: GPU has fallen off the bus (no Xid line)", "reboot")
    ]


def test_nvrm_lines_in_an_unknown_format_are_an_error_naming_the_file(node):
    _, log, _ = node
    shutil.copy(REAL / "journal-localised-month.txt", log)
    errors = [r for r in run(node) if r.status is Status.ERROR]
    assert len(errors) == 1 and errors[0].message.startswith(f"{log}: ")
    assert "NVRM line(s) in a shape not understood" in errors[0].message


def test_xid_line_in_an_unknown_shape_is_an_error(node):
    _, log, _ = node
    log.write_text("4,10,5000000,-;NVRM: Xid (GPU 3): something new\n")
    [error, ok] = run(node)
    assert error.status is Status.ERROR and "NVRM: Xid (GPU 3)" in error.message
    assert ok.status is Status.PASS


def test_a_file_in_no_known_format_is_an_error_not_a_pass(node):
    _, log, _ = node
    log.write_text("this is not a kernel log\nnor is this\n")
    [r] = [r for r in run(node) if r.status is Status.ERROR]
    assert r.message == f"{log}: 2 lines, none in a kernel log format nodecheck reads"


def test_records_lost_between_runs_warn(node):
    _, log, _ = node
    shutil.copy(BEFORE, log)
    run(node)  # cursor at 2873
    log.write_text("4,3500,95000000000,-;usb 1-1: new high-speed USB device number 3\n")
    warn, ok = run(node)
    assert warn.status is Status.WARN and ok.status is Status.PASS
    assert warn.message == "626 kernel log records lost before they were read: Xids may be missed"


def test_unreadable_log_is_an_error_of_ours(node):
    _, log, _ = node
    [r] = run(node)  # the log file does not exist
    assert r.status is Status.ERROR and r.message.startswith(f"cannot read {log}: ")


@pytest.mark.skipif(not os.access("/dev/kmsg", os.R_OK), reason="/dev/kmsg not readable here")
def test_reading_dev_kmsg_does_not_block():
    log = read_kernel_log(Path("/dev/kmsg"))
    assert log.kind == "kmsg"
    assert log.records and all(isinstance(r.pos, int) for r in log.records)
    assert [r.pos for r in log.records] == list(log.positions)


@pytest.mark.parametrize("source", [AFTER, Path("/dev/kmsg")], ids=["file", "device"])
def test_keep_only_drops_text_not_positions(source):
    """gpu.xid reads with keep=XID_MARKS: the same positions as a full read, and exactly
    the records whose message carries a mark."""
    if not os.access(source, os.R_OK):
        pytest.skip(f"{source} not readable here")
    full = read_kernel_log(source)
    kept = read_kernel_log(source, keep=XID_MARKS)
    # /dev/kmsg may grow between the two reads: compare the common part
    common = min(len(full.positions), len(kept.positions))
    assert kept.positions[:common] == full.positions[:common]
    last = kept.positions[common - 1] if common else -1
    assert [r for r in kept.records if r.pos <= last] == [
        r for r in full.records if any(m in r.text for m in XID_MARKS) and r.pos <= last
    ]
    assert len(full.records) == len(full.positions)


def test_xid_cursor_survives_in_state(node):
    _, log, state = node
    shutil.copy(AFTER, log)
    run(node)
    with open_state(state) as st:
        cursor = st.get_json(gpu_xid.XID_STATE_KEY)
    assert cursor == {"boot_id": BOOT.strip(), "source": str(log), "kind": "kmsg", "pos": 3109}


FALLEN = ("gpu3", "Xid 79: GPU has fallen off the bus (no Xid line)", "reboot")


@pytest.mark.parametrize(
    "name",
    [
        "syslog-fallen-off-split.txt",
        "dmesg-fallen-off-split.txt",
        "journal-short-fallen-off-split.txt",
        "kmsg-fallen-off-split.txt",
    ],
)
def test_fallen_off_the_bus_printed_one_record_per_line_fails(node, name):
    """The probe-time message on 0000:5d:00 (the fourth GPU by bus order) as rsyslog wrote it
    to kern.log, one record per line, and those records in the other formats."""
    _, log, _ = node
    shutil.copy(REAL / name, log)
    fails = [r for r in run(node) if r.status is Status.FAIL]
    assert [(r.component, r.message, r.remedy) for r in fails] == [FALLEN]
    assert [r.status for r in run(node)] == [Status.PASS]


def test_the_agents_follower_rebuilds_a_message_split_across_two_catch_ups(node, monkeypatch):
    """The agent follows /dev/kmsg (kernlog.follow) and a run takes the log as read so far:
    the pieces of one message can fall on both sides of a catch-up. A socket that returns
    one record per read stands for the device (the real one is not written to here: a
    later gpu.xid run on this machine would read the lines as a GPU fault)."""
    _, log, _ = node
    lines = (REAL / "kmsg-fallen-off-split.txt").read_text().splitlines()
    device, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    device.setblocking(False)
    real_open, real_ischr = os.open, stat.S_ISCHR
    monkeypatch.setattr(
        kernlog.os,
        "open",
        lambda path, *a, **k: os.dup(device.fileno()) if path == log else real_open(path, *a, **k),
    )
    monkeypatch.setattr(
        kernlog.stat, "S_ISCHR", lambda mode: stat.S_ISSOCK(mode) or real_ischr(mode)
    )
    monkeypatch.setattr(kernlog, "_oldest_position", lambda path: None)
    monkeypatch.setattr(kernlog, "_adopt_on_read", False)
    monkeypatch.setattr(kernlog, "_followed", None)
    for line in lines[:4]:  # ... up to `NVRM: (PCI ID: 10de:2330) installed in this system has`
        writer.send(f"{line}\n".encode())
    kernlog.follow(log, XID_MARKS)
    follower = kernlog._followed
    assert follower is not None
    try:
        assert [r.status for r in run(node)] == [Status.PASS]
        for line in lines[4:]:
            writer.send(f"{line}\n".encode())
        fails = [r for r in run(node) if r.status is Status.FAIL]
        assert [(r.component, r.message, r.remedy) for r in fails] == [FALLEN]
        assert [r.status for r in run(node)] == [Status.PASS]
    finally:
        os.close(follower._fd)
        device.close()
        writer.close()


def test_sxid_follow_up_lines_are_not_events_of_their_own(node):
    """Lambda's published `dmesg | grep SXid`: four non-fatal SXid 22013, each followed by
    its `Severity 0 Engine instance` and `Data {...}` lines. Only recorded, never a WARN."""
    _, log, _ = node
    shutil.copy(REAL / "dmesg-sxid-22013-followups.txt", log)
    [result] = run(node)
    assert result.status is Status.PASS
    assert result.message == "no Xid needing action since boot (4 recorded: Xid 22013)"


def test_sxid_follow_ups_read_after_their_sxid_line_are_not_new(node):
    """A run between an SXid line and its follow-ups: the next run sees only follow-ups."""
    _, log, _ = node
    lines = (REAL / "dmesg-sxid-22013-followups.txt").read_text().splitlines(keepends=True)
    log.write_text(lines[0])
    assert [r.status for r in run(node)] == [Status.PASS]
    log.write_text("".join(lines))
    [result] = run(node)
    assert result.status is Status.PASS
    assert result.message == "no Xid needing action since last run (3 recorded: Xid 22013)"


def test_interleaved_fatal_sxids_count_one_event_per_error(node):
    """Three NVSwitches reporting SXid 20034 (link down) at once after an Xid 79: one event
    per error line, the Severity 1 line whose error line is not in the log being one too."""
    _, log, _ = node
    shutil.copy(REAL / "dmesg-sxid-20034-interleaved.txt", log)
    results = run(node)
    assert {(r.status, r.component, r.values["count"], r.remedy) for r in results} == {
        (Status.FAIL, "nvswitch0", 2, "reboot"),
        (Status.FAIL, "nvswitch1", 1, "reboot"),
        (Status.FAIL, "nvswitch2", 2, "reboot"),
        (Status.FAIL, "pci0000:91:00", 2, "reboot"),
    }


# --- Xid 154 by the loaded driver's branch ---------------------------------------------

# /proc/driver/nvidia/version of the loaded module as quoted in public repositories' tests
# (the open module's lines of 580.95.05 and 595.71.05; the branch is all that is read).
MODULE_VERSIONS = {
    580: "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build\n",
    595: "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  595.71.05  Release Build  "
    "(dvs-builder@host)  Fri Apr 24 06:42:30 UTC 2026\nGCC version:  gcc version 13.3.0\n",
}
# The real Xid 154 record of kmsg-h100-xid79.txt with the new action's code set to 0x5.
XID_154_CODE_5 = (
    "4,3109,90210004011,-;NVRM: Xid (PCI:0000:9a:00): 154, pid='<unknown>', name=<unknown>, "
    "GPU recovery action changed from 0x0 (None) to 0x5 ({name})\n"
)


@pytest.mark.parametrize(
    ("branch", "name", "status", "remedy"),
    [
        (580, "GPU Reset Bus", Status.FAIL, "reset-gpu"),  # R580: NVML_..._GPU_RESET_BUS
        (595, "Recover IMEX Domain", Status.WARN, ""),  # R595 on: the IMEX domain
        (None, "?", Status.FAIL, "reset-gpu"),  # no module version: the safe reading
    ],
)
def test_xid_154_code_is_read_by_the_loaded_driver_branch(node, branch, name, status, remedy):
    proc, log, _ = node
    if branch:
        (proc / "driver" / "nvidia" / "version").write_text(MODULE_VERSIONS[branch])
    log.write_text(XID_154_CODE_5.format(name=name))
    [result] = run(node)
    assert (result.status, result.component, result.remedy or "") == (status, "gpu4", remedy)
    where = f"driver R{branch}" if branch else "driver branch unknown"
    assert where in result.values["why"]


def test_module_version_lines_of_both_kernel_modules():
    from nodecheck.probes.recovery_action import driver_branch, module_version

    assert module_version(MODULE_VERSIONS[595]) == "595.71.05"
    assert driver_branch(module_version(MODULE_VERSIONS[580])) == 580
    proprietary = (
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.216.03  Thu Apr  3 01:14:19 UTC 2025\n"
    )
    assert module_version(proprietary) == "535.216.03"
    jetson = "NVRM version: NVIDIA UNIX Kernel Module for aarch64  34.1.1  Release Build\n"
    assert driver_branch(module_version(jetson)) is None  # not a desktop/datacenter branch
