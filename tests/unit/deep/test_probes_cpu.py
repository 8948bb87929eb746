"""The torch measurement paths, run for real on the CPU build of torch (small sizes)."""

from __future__ import annotations

import pytest

from nodecheck.checks.deep import judge
from nodecheck.probes.active import device, gemm, hostdev, membw, p2p, sdc

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def cpu():
    [found] = device.find_devices(device.load_torch(), "cpu")
    return found


def test_the_cpu_is_the_device_when_asked_or_without_cuda(cpu):
    assert cpu.kind == "cpu" and cpu.component == "cpu" and cpu.name
    if not torch.cuda.is_available():
        assert device.find_devices(torch, "auto") == [cpu]
        with pytest.raises(device.ActiveUnavailable, match="no CUDA device"):
            device.find_devices(torch, "cuda")
    with pytest.raises(ValueError, match="device must be"):
        device.find_devices(torch, "tpu")


@pytest.mark.parametrize("precision", gemm.PRECISIONS)
def test_gemm_gives_a_positive_figure_per_precision(cpu, precision):
    got = gemm.measure(torch, cpu, precision, 96, repeats=2)
    assert got.error == ""
    assert got.tflops is not None and 0 < got.tflops < 1000  # a CPU is far below one PF
    assert got.seconds == pytest.approx(2 * 96**3 / (got.tflops * 1e12))


def test_gemm_rejects_an_unknown_precision(cpu):
    with pytest.raises(ValueError, match="precision must be one of"):
        gemm.measure(torch, cpu, "fp8", 16, 1)


def test_memory_and_host_copies_give_positive_bandwidth(cpu):
    mem = membw.measure(torch, cpu, 4 << 20, repeats=2)
    assert mem.gbps > 0 and mem.nbytes == 4 << 20
    link = hostdev.measure(torch, cpu, 4 << 20, repeats=2)
    assert link.h2d_gbps > 0 and link.d2h_gbps > 0
    assert link.pinned is False  # no pinned memory without CUDA


def test_p2p_pairs_and_one_pair_measured(cpu):
    assert p2p.pairs([cpu]) == []
    other = device.Device("cpu", 1, cpu.name)
    assert [(a.component, b.component) for a, b in p2p.pairs([cpu, other])] == [("cpu", "cpu1")]
    got = p2p.measure_pair(torch, cpu, other, 1 << 20, repeats=1)
    assert got.component == "cpu-cpu1" and got.oneway_gbps > 0 and got.bidir_gbps > 0


def test_sdc_same_product_on_every_device_and_repeat(cpu):
    devices = [device.Device("cpu", i, cpu.name) for i in range(3)]
    measured = sdc.measure(torch, devices, 48, repeats=2)
    digests = {d for m in measured for d in m.digests}
    assert len(digests) == 1
    results = judge.judge_digests(
        [judge.Outcome(m.device.component, m.device.name, m.digests) for m in measured]
    )
    assert {r.status.name for r in results} == {"PASS"}


def test_sdc_catches_a_device_whose_result_has_one_flipped_bit(cpu):
    """The fault is injected at the boundary: device cpu2's matmul returns the real product
    with one bit of one element flipped, as a marginal multiplier would."""

    def flaky(torch_mod, dev, left, right, precision):
        product = sdc.matmul_on(torch_mod, dev, left, right, precision)
        if dev.index == 2:
            bits = product.view(torch_mod.int32)
            bits[7, 3] ^= 1 << 4
        return product

    devices = [device.Device("cpu", i, cpu.name) for i in range(4)]
    measured = sdc.measure(torch, devices, 48, repeats=2, compute=flaky)
    results = judge.judge_digests(
        [judge.Outcome(m.device.component, m.device.name, m.digests) for m in measured]
    )
    failed = [(r.component, r.message) for r in results if r.status.name == "FAIL"]
    assert failed == [("cpu2", f"GEMM result differs from the other 3 {cpu.name} device(s)")]


# --- issue 25, item 4: deep.sdc covers the tensor-core paths, deterministically -------


def test_sdc_check_digests_every_training_precision():
    """fp32 alone misses a fault in a tensor-core datapath: tf32, bf16 and fp16 each get
    their own comparison, merged into the device's one result."""
    from helpers import make_ctx

    from nodecheck.checks.deep.sdc import deep_sdc
    from nodecheck.checks.registry import all_checks

    options = {n: o.default for n, o in all_checks()["deep.sdc"].options.items()}
    options.update(cpu_size=32, repeats=2)
    [result] = list(deep_sdc(make_ctx(phase="manual", options=options)))
    assert result.status.name == "PASS", result
    assert set(result.values) == {"fp32", "tf32", "bf16", "fp16"}
    # bf16/fp16 are other numbers; tf32 is plain float32 on the CPU (TF32 is a GPU mode).
    for precision in ("bf16", "fp16"):
        assert result.values[precision]["digests"][0] != result.values["fp32"]["digests"][0]


def test_sdc_computes_with_deterministic_algorithms_and_a_fixed_cublas_workspace(cpu):
    """The comment always said so; now each product runs with torch's deterministic
    algorithms on and cuBLAS's workspace fixed (CUBLAS_WORKSPACE_CONFIG, set before CUDA
    starts), TF32 math only in the tf32 pass; and the settings are restored."""
    import os

    seen = []

    def recording(torch_mod, dev, left, right, precision):
        seen.append((precision, torch_mod.are_deterministic_algorithms_enabled(),
                     torch_mod.backends.cuda.matmul.allow_tf32, str(left.dtype)))  # fmt: skip
        return sdc.matmul_on(torch_mod, dev, left, right, precision)

    before = torch.are_deterministic_algorithms_enabled()
    sdc.measure(torch, [cpu], 16, 1, compute=recording,
                precisions=["fp32", "tf32", "bf16", "fp16"])  # fmt: skip
    assert seen == [("fp32", True, False, "torch.float32"), ("tf32", True, True, "torch.float32"),
                    ("bf16", True, False, "torch.bfloat16"),
                    ("fp16", True, False, "torch.float16")]  # fmt: skip
    assert torch.are_deterministic_algorithms_enabled() == before
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")
