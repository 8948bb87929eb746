"""The deep tier on a real GPU node: what only CUDA and the real driver can show.

Skipped, as a whole module, where NVML does not start or torch has no CUDA. `make test-gpu`
runs it (tools/test-gpu.py), with the NVML binding suite and a full `nodecheck run --tier
deep --json`, and records what it measured under tests/fixtures/real/gpu-runs/.
"""

from __future__ import annotations

import os
import time

import pytest

from nodecheck.probes import nvml
from nodecheck.probes.nvml import real

snap = real.collect()
if snap.init_error is not None or not snap.device_count:
    pytest.skip(f"no usable GPU/NVML: {snap.init_error}", allow_module_level=True)
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("torch has no CUDA here (the CPU wheel?)", allow_module_level=True)

from helpers import make_ctx  # noqa: E402

from nodecheck.checks.deep.common import select_devices  # noqa: E402
from nodecheck.checks.registry import all_checks  # noqa: E402
from nodecheck.core.results import Status  # noqa: E402
from nodecheck.probes.active import device, gemm, hostdev, owners, sdc  # noqa: E402


def ctx_for(check_id: str, **options):
    declared = all_checks()[check_id].options
    merged = {name: opt.default for name, opt in declared.items()}
    merged.update(options)
    return make_ctx(phase="manual", options=merged, nvml="real")


@pytest.fixture(autouse=True)
def _fresh_nvml():
    nvml.clear_cache()
    yield
    nvml.clear_cache()


def test_our_own_cuda_contexts_do_not_make_the_gpus_busy():
    """Issue 25 item 1 on the real driver: with a CUDA context of this process on every GPU
    (as after deep.gemm), NVML lists our pid there, and every GPU is still measured."""
    for index in range(torch.cuda.device_count()):
        torch.ones(1, device=f"cuda:{index}")
    mine = owners.own_pids()
    listed = {p.pid for g in nvml.collect_fresh("real").gpus for p in (g.processes or ())}
    print(f"\nNVML processes {sorted(listed)}; ours {sorted(mine & listed)}")
    chosen = select_devices(ctx_for("deep.membw"), "deep.membw")
    others = [r for r in chosen.skipped if r.values.get("refused")]
    assert len(chosen.devices) + len(others) == torch.cuda.device_count()
    assert all(set(r.values["pids"]).isdisjoint(mine) for r in others)


def test_cuda_events_time_the_gpu_work_not_the_launch():
    dev = device.Device("cuda", 0, torch.cuda.get_device_name(0))
    a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
    torch.cuda.synchronize(0)
    watch = device.Stopwatch(torch, dev)
    launched = time.perf_counter()
    watch.start()
    for _ in range(20):
        torch.matmul(a, a)
    enqueue = time.perf_counter() - launched
    seconds = watch.stop()
    print(f"\n20 bf16 GEMMs: enqueue {enqueue * 1e3:.2f} ms, GPU time {seconds * 1e3:.2f} ms")
    assert seconds > enqueue  # the launches return long before the GPU is done


def test_gemm_check_with_a_short_sustained_phase_reads_throttle_reasons():
    results = list(all_checks()["deep.gemm"].func(ctx_for("deep.gemm", sustain_s=10)))
    assert results and not [r for r in results if r.status is Status.ERROR], results
    for r in results:
        held = r.values["sustained bf16 GEMM"]
        print(f"{r.component}: {r.status.name} {r.message}")
        assert len(held["windows"]) >= 5 and isinstance(held["throttle"], list)


def test_hostdev_binds_to_each_gpus_numa_node_from_the_real_sysfs():
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        dev = device.find_devices(torch, "cuda")[index]
        got = hostdev.measure(torch, dev, 256 << 20, 3)
        print(
            f"\ngpu{index} {props.name}: node {got.numa_node}, {len(got.bound_cpus)} CPUs, "
            f"h2d {got.h2d_gbps:.1f} d2h {got.d2h_gbps:.1f} GB/s {got.unbound_why}"
        )
        assert got.pinned and got.h2d_gbps > 1 and got.d2h_gbps > 1


def test_sdc_digests_agree_on_every_gpu_in_every_precision():
    devices = device.find_devices(torch, "cuda")
    measured = sdc.measure(torch, devices, 2048, 2, precisions=list(sdc.PRECISIONS))
    for precision in sdc.PRECISIONS:
        digests = {d for m in measured if m.precision == precision for d in m.digests}
        models = {m.device.name for m in measured}
        assert len(digests) == len(models), (precision, digests)


def test_p2p_reads_the_real_topology_matrix():
    if torch.cuda.device_count() < 2 or not os.access("/usr/bin/nvidia-smi", os.X_OK):
        pytest.skip("needs two GPUs and /usr/bin/nvidia-smi")
    results = list(all_checks()["deep.p2p"].func(ctx_for("deep.p2p", mib=64)))
    for r in results:
        print(f"{r.component}: {r.status.name} {r.message}")
    assert all(r.values.get("path") for r in results if "-" in r.component)


def test_sustained_gemm_runs_every_gpu_at_once():
    devices = tuple(device.find_devices(torch, "cuda"))
    started = time.monotonic()
    held = gemm.sustained(torch, devices, "bf16", 4096, 3.0)
    assert time.monotonic() - started < 3.0 * 2 + 5  # at once, not one GPU after another
    assert all(len(h.windows) >= 3 for h in held)
