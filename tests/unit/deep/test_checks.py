"""The deep checks themselves, called as the runner calls them.

The torch checks run for real on the CPU build. What this machine lacks is replaced only at
the hardware boundary: the CUDA devices torch would enumerate (from the bus ids of the
recorded HGX H100 in tests/fixtures/nvml) with NVML read through the replay adapter, and
dcgmi / all_reduce_perf by a fake binary that prints a real published output.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers import make_ctx

from deep.test_tools import REAL, fake_tool
from nodecheck.checks.context import CheckContext
from nodecheck.checks.deep.common import select_devices as select
from nodecheck.checks.deep.gpu import deep_gemm, deep_hostdev, deep_membw
from nodecheck.checks.deep.p2p import deep_p2p
from nodecheck.checks.deep.sdc import deep_sdc
from nodecheck.checks.deep.tools import deep_dcgm, deep_ibperf, deep_nccl
from nodecheck.checks.registry import all_checks
from nodecheck.core.results import CheckResult, Status
from nodecheck.probes.active import device

torch = pytest.importorskip("torch")

NVML = Path(__file__).resolve().parents[2] / "fixtures" / "nvml"
H100 = "NVIDIA H100 80GB HBM3"
H100_BUSES = ["18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"]  # as in the replay fixtures

SMALL = {"cpu_size": 32, "cpu_mib": 2, "repeats": 1, "size": 32, "mib": 2, "cpu_sustain_s": 0.2}


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
    """Every GPU busy: the check yields the refusal and an ERROR that it measured nothing
    (never a pass for validate), and never reaches the measurement (which would fail here:
    there is no CUDA)."""
    torch_sees(cuda_devices(["18"]))
    ctx = ctx_for("deep.gemm", nvml=f"replay:{NVML / 'h100-leftover-process.json'}")
    refused, nothing = run(deep_gemm, ctx)
    assert refused.status is Status.SKIP and refused.component == "gpu0"
    assert nothing.status is Status.ERROR and "measured no GPU" in nothing.message


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
    assert membw.status is Status.PASS and membw.values["memory copy"]["measured"] > 0
    assert membw.values["memory copy"]["bytes"] == SMALL["cpu_mib"] * 1024**2
    assert membw.values["sustained memory copy"]["windows"]
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


# --- deep.ibperf: perftest's two halves, faked at the binary with real outputs --------

PERFTEST = """import os, sys, time
args = sys.argv[1:]
marker = os.path.join({tmp!r}, "served-" + args[args.index("-d") + 1])
log = open(os.path.join({tmp!r}, "argv.log"), "a")
log.write(repr(args) + "\\n")
if args[-1] != "127.0.0.1":  # the server: waits for its client, as perftest does
    open(marker + ".listening", "w").close()
    for _ in range(100):
        if os.path.exists(marker):
            sys.exit(0)
        time.sleep(0.05)
    sys.exit(1)
if not os.path.exists(marker + ".listening"):
    print("Couldn't connect to 127.0.0.1:" + args[args.index("-p") + 1])
    sys.exit(1)
sys.stdout.write(open({fixture!r}).read())
open(marker, "w").close()
"""


def perftest(tmp_path: Path, name: str, fixture: str) -> str:
    body = PERFTEST.format(tmp=str(tmp_path), fixture=str(REAL / fixture))
    return fake_tool(tmp_path, body, name=name)


@pytest.fixture
def two_hcas(tmp_path):
    from tests.fixtures.sysfs import FakeSysfs

    fake = FakeSysfs(tmp_path / "sys")
    fake.add_hca("mlx5_0", link_layer="Ethernet", speed="NDR", width=4, netdev="eth2")
    fake.add_hca("mlx5_1", link_layer="Ethernet", speed="NDR", width=4, netdev="eth3")
    return fake.root


def ibperf_ctx(tmp_path: Path, sysfs_root: Path, **options: Any) -> CheckContext:
    tools = {
        "bw_binary": perftest(tmp_path, "ib_write_bw", "ib_write_bw-roce-cx7-65536-bwmin.txt"),
        # ib_write_lat prints the table every ib_*_lat prints: a real ib_read_lat output.
        "lat_binary": perftest(tmp_path, "ib_write_lat", "ib_read_lat-roce.txt"),
        "run_timeout_s": 20,
        "size": 65536,  # the fixture's message size (SMALL shrinks "size" for torch checks)
    }
    ctx = ctx_for("deep.ibperf", **{**tools, **options})
    return replace(ctx, settings=replace(ctx.settings, sysfs_root=sysfs_root))


def test_ibperf_measures_each_hca_through_loopback_against_its_port_rate(tmp_path, two_hcas):
    results = run(deep_ibperf, ibperf_ctx(tmp_path, two_hcas))
    assert [r.component for r in results] == ["mlx5_0/1", "mlx5_1/1"]
    for result in results:
        assert result.status is Status.PASS, result
        bw, lat = result.values["ib_write_bw"], result.values["ib_write_lat"]
        assert bw["measured"] == pytest.approx(368.48) and bw["port_rate_gbps"] == 400
        assert bw["floor_gbps"] == pytest.approx(320) and lat["measured"] == pytest.approx(7.04)
    calls = (tmp_path / "argv.log").read_text().splitlines()
    # Server and client per HCA and tool, argument lists with the HCA and the loopback.
    assert any("'-d', 'mlx5_1'" in c and c.endswith("'127.0.0.1']") for c in calls)
    assert any("'--report_gbits'" in c and "'-s', '65536'" in c for c in calls)


def test_ibperf_fails_an_hca_below_its_share_and_a_latency_above_the_ceiling(tmp_path, two_hcas):
    results = run(
        deep_ibperf,
        ibperf_ctx(tmp_path, two_hcas, devices=["mlx5_1"], min_fraction=0.95, max_lat_us=5),
    )
    [result] = results
    assert result.status is Status.FAIL and result.component == "mlx5_1/1"
    assert "ib_write_bw 368.48 Gb/s below 380" in result.message
    assert "ib_write_lat 7.04 us above 5" in result.message


def test_ibperf_without_the_tool_or_an_hca_skips(tmp_path, two_hcas):
    ctx = ibperf_ctx(tmp_path, two_hcas, bw_binary=str(tmp_path / "absent"))
    [result] = run(deep_ibperf, ctx)
    assert result.status is Status.SKIP and "not installed" in result.message
    empty = tmp_path / "empty-sys"
    empty.mkdir()
    [result] = run(deep_ibperf, ibperf_ctx(tmp_path, empty))
    assert result.status is Status.SKIP and "no RDMA device" in result.message


def test_ibperf_output_without_a_table_is_an_error_naming_the_tool(tmp_path, two_hcas):
    broken = fake_tool(tmp_path, "print('Failed to open device mlx5_0')", name="broken_bw")
    ctx = ibperf_ctx(tmp_path, two_hcas, bw_binary=broken, devices=["mlx5_0"])
    ctx = replace(ctx, options={**ctx.options, "lat_binary": str(tmp_path / "absent")})
    [result] = run(deep_ibperf, ctx)
    assert result.status is Status.ERROR and "ib_write_bw gave no result" in result.message
    assert "Failed to open device" in result.message
