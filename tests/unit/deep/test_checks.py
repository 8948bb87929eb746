"""The deep checks themselves, called as the runner calls them.

The torch checks run for real on the CPU build. What this machine lacks is replaced only at
the hardware boundary: the CUDA devices torch would enumerate (from the bus ids of the
recorded HGX H100 in tests/fixtures/nvml) with NVML read through the replay adapter, and
dcgmi / all_reduce_perf by a fake binary that prints a real published output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import make_ctx

from deep.test_tools import REAL, fake_tool
from nodecheck.checks.context import CheckContext
from nodecheck.checks.deep.gpu import deep_gemm, deep_hostdev, deep_membw, deep_p2p
from nodecheck.checks.deep.gpu import select_devices as select
from nodecheck.checks.deep.sdc import deep_sdc
from nodecheck.checks.deep.tools import deep_dcgm, deep_nccl
from nodecheck.checks.registry import all_checks
from nodecheck.probes.active import device
from nodecheck.run.results import CheckResult, Status

torch = pytest.importorskip("torch")

NVML = Path(__file__).resolve().parents[2] / "fixtures" / "nvml"
H100 = "NVIDIA H100 80GB HBM3"
H100_BUSES = ["18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"]  # as in the replay fixtures

SMALL = {"cpu_size": 32, "cpu_mib": 2, "repeats": 1, "size": 32, "mib": 2}


def ctx_for(check_id: str, nvml: str = "real", **options: Any) -> CheckContext:
    """The check's option defaults, small CPU sizes, then `options`."""
    declared = all_checks()[check_id].options
    merged = {name: opt.default for name, opt in declared.items()}
    merged.update({k: v for k, v in SMALL.items() if k in declared})
    merged.update(options)
    return make_ctx(phase="manual", options=merged, nvml=nvml)


def run(func, ctx: CheckContext) -> list[CheckResult]:
    return list(func(ctx))


def cuda_devices(buses: list[str]) -> list[device.Device]:
    """What torch.cuda would enumerate on the recorded node (CUDA index, model, bus id)."""
    return [device.Device("cuda", i, H100, f"00000000:{bus}:00.0") for i, bus in enumerate(buses)]


@pytest.fixture
def torch_sees(monkeypatch):
    """Make torch's device enumeration return the given devices (the hardware boundary)."""

    def install(found: list[device.Device]) -> None:
        monkeypatch.setattr(device, "find_devices", lambda _torch, _want="auto": list(found))

    return install


# --- select_devices: a GPU in use is never measured ----------------------------------


def test_a_gpu_with_someone_elses_process_is_refused_and_the_rest_measured(
    torch_sees, fresh_nvml_cache
):
    torch_sees(cuda_devices(H100_BUSES))
    ctx = ctx_for("deep.gemm", nvml=f"replay:{NVML / 'h100-leftover-process.json'}")
    chosen = select(ctx, "deep.gemm")
    assert [d.component for d in chosen.devices] == [f"gpu{i}" for i in range(1, 8)]
    [refused] = chosen.skipped
    assert refused.status is Status.SKIP and refused.component == "gpu0"
    assert "48213" in refused.message


def test_gpus_are_named_as_nvml_numbers_them_whatever_cuda_visible_devices_did(
    torch_sees, fresh_nvml_cache
):
    # CUDA_VISIBLE_DEVICES=3,6: torch's cuda:0 is NVML's GPU 3 (bus 5D), cuda:1 is GPU 6.
    torch_sees(cuda_devices(["5D", "BA"]))
    ctx = ctx_for("deep.membw", nvml=f"replay:{NVML / 'h100-healthy.json'}")
    chosen = select(ctx, "deep.membw")
    assert [(d.index, d.component) for d in chosen.devices] == [(0, "gpu3"), (1, "gpu6")]
    assert chosen.skipped == ()


def test_without_nvml_no_gpu_is_measured_and_the_result_says_why(torch_sees, fresh_nvml_cache):
    torch_sees(cuda_devices(H100_BUSES))
    ctx = ctx_for("deep.sdc", nvml=f"replay:{NVML / 'no-nvml.json'}")
    chosen = select(ctx, "deep.sdc")
    assert chosen.devices == ()
    [error] = chosen.skipped
    assert (
        error.status is Status.ERROR and "cannot tell whether the GPUs are in use" in error.message
    )


def test_a_gpu_nvml_does_not_list_is_not_measured(torch_sees, fresh_nvml_cache):
    torch_sees(cuda_devices(["18", "FE"]))  # FE: not on the recorded node
    ctx = ctx_for("deep.gemm", nvml=f"replay:{NVML / 'h100-healthy.json'}")
    chosen = select(ctx, "deep.gemm")
    assert [d.component for d in chosen.devices] == ["gpu0"]
    [error] = chosen.skipped
    assert error.status is Status.ERROR and error.component == "gpu1"


def test_the_gemm_check_refuses_a_busy_node_without_touching_a_gpu(torch_sees, fresh_nvml_cache):
    """Every GPU busy: the check yields only refusals, and never reaches the measurement
    (which would fail here: there is no CUDA)."""
    torch_sees(cuda_devices(["18"]))
    ctx = ctx_for("deep.gemm", nvml=f"replay:{NVML / 'h100-leftover-process.json'}")
    [result] = run(deep_gemm, ctx)
    assert result.status is Status.SKIP and result.component == "gpu0"


# --- the torch checks on the CPU ------------------------------------------------------


def test_gemm_check_reports_each_precision_on_the_cpu():
    [result] = run(deep_gemm, ctx_for("deep.gemm", precisions=["fp16", "tf32"]))
    assert result.status is Status.PASS and result.component == "cpu"
    for metric in ("fp16 GEMM", "tf32 GEMM"):
        assert result.values[metric]["measured"] > 0
        assert result.values[metric]["size"] == SMALL["cpu_size"]


def test_gemm_check_below_the_expected_figure_fails_naming_it():
    [result] = run(deep_gemm, ctx_for("deep.gemm", precisions=["tf32"], expected=1e6))
    assert result.status is Status.FAIL
    assert "tf32 GEMM" in result.message and "configured expected" in result.message
    assert result.values["tf32 GEMM"]["expected"] == 1e6


def test_membw_and_hostdev_checks_report_bandwidth_on_the_cpu():
    [membw] = run(deep_membw, ctx_for("deep.membw"))
    assert membw.status is Status.PASS and membw.values["measured"] > 0
    assert membw.values["bytes"] == SMALL["cpu_mib"] * 1024**2
    [hostdev] = run(deep_hostdev, ctx_for("deep.hostdev"))
    assert hostdev.status is Status.PASS
    assert hostdev.values["host->device"]["measured"] > 0
    assert hostdev.values["device->host"]["measured"] > 0


def test_membw_below_the_expected_figure_fails():
    [result] = run(deep_membw, ctx_for("deep.membw", expected=1e9))
    assert result.status is Status.FAIL and "memory copy" in result.message


def test_sdc_check_passes_on_a_deterministic_cpu():
    [result] = run(deep_sdc, ctx_for("deep.sdc", repeats=2))
    assert result.status is Status.PASS and result.component == "cpu"


def test_p2p_needs_two_devices():
    [result] = run(deep_p2p, ctx_for("deep.p2p"))
    assert result.status is Status.SKIP and "at least 2 GPUs" in result.message


def test_p2p_measures_every_pair_and_judges_them_by_the_median(torch_sees):
    """Three devices (three views of the CPU, copied between for real): three pairs, no
    direct peer access, so no datasheet figure applies, only the median. The figures of a
    shared CPU vary too much to judge here (median_fraction 0: test_judge does that)."""
    torch_sees([device.Device("cpu", i, "cpu") for i in range(3)])
    results = run(deep_p2p, ctx_for("deep.p2p", median_fraction=0.0))
    assert sorted(r.component for r in results) == ["cpu-cpu1", "cpu-cpu2", "cpu1-cpu2"]
    for result in results:
        assert result.status is Status.PASS, result
        assert result.values["measured"] > 0 and result.values["peer_access"] is False
        assert "node's median" in result.message and "expected" not in result.values


# --- dcgmi and nccl-tests through a fake binary printing a real output ---------------


def printing(tmp_path: Path, fixture: str, argv: list[str], code: int = 0) -> str:
    return fake_tool(
        tmp_path,
        f"import sys\nassert sys.argv[1:] == {argv!r}, sys.argv\n"
        f"sys.stdout.write(open({str(REAL / fixture)!r}).read())\nsys.exit({code})",
    )


def test_dcgm_check_gives_each_test_on_each_gpu_a_result(tmp_path):
    binary = printing(tmp_path, "dcgmi-diag-v3-8gpu-pass.json", ["diag", "-r", "2", "-j"])
    results = run(deep_dcgm, ctx_for("deep.dcgm", dcgmi=binary, level=2))
    assert {r.component for r in results} == {f"gpu{i}" for i in range(8)} | {"node"}
    assert all(r.status is Status.PASS for r in results)
    assert all(r.values["level"] == 2 for r in results)


def test_dcgm_check_fails_the_gpu_dcgm_failed_with_its_warning(tmp_path):
    binary = printing(tmp_path, "dcgmi-diag-v3-gpu0-memory-fail.json", ["diag", "-r", "1", "-j"])
    results = run(deep_dcgm, ctx_for("deep.dcgm", dcgmi=binary))
    failed = [r for r in results if r.status is Status.FAIL]
    memory = next(r for r in failed if r.values["test"] == "GPU Memory")
    assert memory.component == "gpu0" and memory.values["warnings"]
    assert memory.values["warnings"][0][:40] in memory.message


def test_dcgm_check_without_json_or_in_time_is_error_or_fail(tmp_path):
    noise = fake_tool(tmp_path, "print('Error: unable to connect to host engine')")
    [result] = run(deep_dcgm, ctx_for("deep.dcgm", dcgmi=noise))
    assert result.status is Status.ERROR and "unable to connect" in result.message
    hangs = fake_tool(tmp_path, "import time\ntime.sleep(60)")
    [result] = run(deep_dcgm, ctx_for("deep.dcgm", dcgmi=hangs, run_timeout_s=1))
    assert result.status is Status.FAIL and result.values["hung"] is True
    [result] = run(deep_dcgm, ctx_for("deep.dcgm", dcgmi=noise, level=7))
    assert result.status is Status.ERROR and "level must be 1-4" in result.message
    [result] = run(deep_dcgm, ctx_for("deep.dcgm", dcgmi=str(tmp_path / "absent")))
    assert result.status is Status.SKIP and "not installed" in result.message


def test_nccl_check_reads_the_bus_bandwidth_and_judges_the_floor(tmp_path):
    args = ["-b", "8", "-e", "128M", "-f", "2", "-g", "1"]
    binary = printing(tmp_path, "all_reduce_perf-a800-24ranks.txt", args)
    [result] = run(deep_nccl, ctx_for("deep.nccl", binary=binary, args=args))
    assert result.status is Status.PASS
    assert result.values["avg_busbw_gbps"] == pytest.approx(41.6967)
    assert result.values["wrong"] == 0
    [result] = run(deep_nccl, ctx_for("deep.nccl", binary=binary, args=args, min_busbw_gbps=100))
    assert result.status is Status.FAIL and "below 100" in result.message
