"""Issue 25, item 4: sustained load that can see throttling, and host copies on the GPU's
own NUMA node.

A GEMM timed over milliseconds runs at the clocks a GPU starts with; power and thermal limits
act over seconds. The sustained phase keeps every device busy for `sustain_s`, reads NVML's
clock-event reasons while it does, and judges the rate the device holds. deep.hostdev binds
the process to the CPUs of the GPU's NUMA node (sysfs) before it allocates pinned memory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from deep.test_checks import ctx_for, run
from nodecheck.checks.deep import judge
from nodecheck.checks.deep.gpu import deep_gemm
from nodecheck.core.results import Status
from nodecheck.probes.active import device, hostdev, numa, sustain

torch = pytest.importorskip("torch")

BDF_NVML = "00000000:18:00.0"


def fake_numa_sysfs(root: Path, device_node: int, cpus_by_node: dict[int, str]) -> Path:
    """/sys/bus/pci/devices/0000:18:00.0/numa_node and /sys/devices/system/node/nodeN/cpulist
    with the kernel's file names and formats."""
    dev = root / "bus/pci/devices/0000:18:00.0"
    dev.mkdir(parents=True)
    (dev / "numa_node").write_text(f"{device_node}\n")
    for node, cpulist in cpus_by_node.items():
        d = root / f"devices/system/node/node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpulist + "\n")
    return root


def test_host_copies_run_bound_to_the_gpus_numa_node_and_the_binding_is_undone(tmp_path):
    allowed = sorted(os.sched_getaffinity(0))
    local = allowed[-1]
    far = ",".join(str(c) for c in allowed if c != local) or "4095"
    sysfs = fake_numa_sysfs(tmp_path / "sys", 1, {0: far, 1: str(local)})
    gpu_like = device.Device("cpu", 0, "test", pci_bus_id=BDF_NVML)  # the copies run on the CPU
    got = hostdev.measure(torch, gpu_like, 1 << 20, 1, sysfs_root=sysfs)
    assert got.numa_node == 1 and got.bound_cpus == {local} and got.unbound_why == ""
    assert os.sched_getaffinity(0) == set(allowed)


def test_a_platform_without_numa_information_is_measured_unbound_and_says_why(tmp_path):
    sysfs = fake_numa_sysfs(tmp_path / "sys", -1, {})
    got = hostdev.measure(torch, device.Device("cpu", 0, "t", pci_bus_id=BDF_NVML), 1 << 20, 1,
                          sysfs_root=sysfs)  # fmt: skip
    assert got.numa_node is None and got.bound_cpus == frozenset()
    assert "no NUMA node (-1)" in got.unbound_why


def test_cpulist_and_bus_id_formats():
    assert numa.parse_cpulist("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert device.Device("cuda", 0, "x", BDF_NVML).sysfs_bdf == "0000:18:00.0"
    assert device.Device("cuda", 0, "x", "00000001:AB:00.0").sysfs_bdf == "0001:ab:00.0"


def test_the_gemm_check_has_a_sustained_phase_as_long_as_configured():
    started = time.monotonic()
    [result] = run(deep_gemm, ctx_for("deep.gemm", precisions=["fp16"], cpu_sustain_s=0.6))
    assert time.monotonic() - started >= 0.6
    held = result.values["sustained bf16 GEMM"]
    assert len(held["windows"]) >= 2 and held["seconds"] >= 0.6
    assert held["measured"] > 0 and result.status is Status.PASS


def test_throttle_reasons_are_read_while_the_devices_are_loaded():
    """`under_load` runs once, in the last window, while work is still queued; its reasons
    land on the device with that bus id."""
    calls = []
    gpu_like = device.Device("cpu", 0, "t", pci_bus_id=BDF_NVML)

    def reasons():
        calls.append(time.monotonic())
        return {BDF_NVML: ("sw_power_cap", "hw_thermal_slowdown")}

    left = torch.randn(64, 64)
    [held] = sustain.run(torch, {gpu_like: lambda: float(torch.mm(left, left).sum() * 0 + 1)},
                         0.3, 0.1, reasons)  # fmt: skip
    assert len(calls) == 1 and held.throttle == ("sw_power_cap", "hw_thermal_slowdown")
    assert len(held.windows) >= 2


def held(component, windows, throttle=()):
    return judge.Held(component, windows, sustain.settled(windows), sustain.drop(windows),
                      throttle)  # fmt: skip


REF = judge.Reference(900.0, "H100 SXM datasheet", 0.6, 0.8)


def test_a_gpu_that_holds_its_rate_passes_and_power_capping_is_only_reported():
    [result] = judge.judge_sustained("deep.gemm", "bf16 GEMM", "TFLOP/s",
                                     [held("gpu0", (700, 690, 695, 700), ("sw_power_cap",))],
                                     REF, max_drop=0.15, seconds=60)  # fmt: skip
    assert result.status is Status.PASS and result.values["throttle"] == ["sw_power_cap"]


def test_hardware_throttling_under_load_fails_even_at_a_good_rate():
    [result] = judge.judge_sustained("deep.gemm", "bf16 GEMM", "TFLOP/s",
                                     [held("gpu3", (700, 690, 680, 680), ("hw_slowdown",))],
                                     REF, max_drop=0.15, seconds=60)  # fmt: skip
    assert result.status is Status.FAIL and "hw_slowdown" in result.message


def test_a_rate_that_falls_off_over_the_phase_warns_and_one_that_falls_too_far_fails():
    [warned, failed] = judge.judge_sustained(
        "deep.gemm", "bf16 GEMM", "TFLOP/s",
        [held("gpu1", (760, 700, 600, 590)), held("gpu2", (760, 500, 400, 380))],
        REF, max_drop=0.15, seconds=60,
    )  # fmt: skip
    assert warned.status is Status.WARN and "fell 21%" in warned.message
    assert failed.status is Status.FAIL and "below 60%" in failed.message


def test_a_cpus_falling_rate_is_no_throttling():
    """The CPU stand-in's rate falls whenever another process takes its cores (a busy CI
    machine measured a 20% fall): no WARN for it, as there is none for a GPU that holds."""
    cpu = judge.Reference(None, "cpu not in the table", 0.0, 0.8)
    [result] = judge.judge_sustained("deep.gemm", "fp32 GEMM", "TFLOP/s",
                                     [held("cpu", (1.0, 0.9, 0.8, 0.78))],
                                     cpu, max_drop=0.15, seconds=2)  # fmt: skip
    assert result.status is Status.PASS, result
