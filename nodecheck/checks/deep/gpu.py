"""Deep GPU checks: GEMM throughput, device memory and host<->device bandwidth.

Each check measures through `nodecheck.probes.active` (PyTorch, CUDA on a GPU node, the CPU
here) and judges the figures with `judge.py` against the model's datasheet row in
`expected.py`, or against the node's median GPU for a model not in the table. All of them
run in group "deep": one after another in one probe child, so that no two measurements share
a device at once, each cut at its own timeout. Which devices may be measured, and what "in
use" means, is `common.select_devices`; deep.p2p is in p2p.py, deep.sdc in sdc.py.

GEMM and memory copies are measured twice: short (milliseconds, the part's peak at its
starting clocks) and sustained (all GPUs at once for `sustain_s` seconds), because power and
thermal throttling act over seconds and a GPU that throttles passes every short measurement.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from nodecheck.checks.context import CheckContext
from nodecheck.checks.deep.common import (
    DEVICE,
    GROUP,
    MEDIAN_FRACTION,
    MIB,
    REPEATS,
    explains_table,
    min_fraction,
    reference,
    select_devices,
    size_of,
    throttle_reader,
)
from nodecheck.checks.registry import Option, check
from nodecheck.core.progress import note
from nodecheck.core.results import CheckResult

if TYPE_CHECKING:
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active.sustain import Sustained

MAX_DROP = Option(
    float, 0.15, "WARN when the sustained rate falls more than this share below its early best"
)


def _held(measured: list[Sustained]) -> list[judge.Held]:
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import sustain

    return [
        judge.Held(
            m.device.component,
            m.windows,
            sustain.settled(m.windows),
            sustain.drop(m.windows),
            m.throttle,
        )
        for m in measured
    ]


# --- deep.gemm ------------------------------------------------------------------------


@check(
    "deep.gemm",
    tier="deep",
    group=GROUP,
    summary="dense GEMM TFLOP/s per GPU and precision vs the model's datasheet (or the median)",
    phases=("manual",),
    timeout_s=240.0,
    severity="medium",
    remedy="admin",
    memory_limit_mb=0,
    options={
        "device": DEVICE,
        "precisions": Option(list, ["bf16", "fp16", "tf32"], "precisions to measure", item=str),
        "size": Option(int, 8192, "square matrix size on a GPU"),
        "cpu_size": Option(int, 256, "square matrix size on the CPU (tests, CI)"),
        "repeats": REPEATS,
        "min_fraction": min_fraction(0.6, "cuBLAS reaches 60-80% of the tensor-core peak"),
        "median_fraction": MEDIAN_FRACTION,
        "expected": Option((int, float), 0, "expected TFLOP/s for every precision (0: table)"),
        "sustain_s": Option(
            (int, float), 60, "seconds of sustained GEMM on all GPUs at once (0: none)"
        ),
        "cpu_sustain_s": Option((int, float), 0.5, "seconds of sustained GEMM on the CPU"),
        "sustain_precision": Option(
            str, "bf16", "precision of the sustained phase", choices=("bf16", "fp16", "tf32")
        ),
        "max_drop": MAX_DROP,
    },
)
@explains_table
def deep_gemm(ctx: CheckContext) -> Iterator[CheckResult]:
    """Multiplies two square matrices on each GPU in bf16, fp16 and tf32 and reports TFLOP/s
    (2*n^3 per multiply, the median of the timed repeats, CUDA events around each), then
    keeps every GPU multiplying at once for `sustain_s` seconds and judges the rate each one
    holds, with NVML's throttle reasons read under that load. A GPU below its share of the
    datasheet figure is throttling (power, clocks, thermals), has a degraded tensor-core
    path, or sits on a board that starves it; one that starts fast and falls off is power or
    cooling. Fix: `nvidia-smi -q -d PERFORMANCE` under load for throttle reasons, check
    cooling, fans and power capping; a GPU that stays slow is an RMA."""
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import gemm

    chosen = select_devices(ctx, "deep.gemm")
    yield from chosen.skipped
    if chosen.torch is None or not chosen.devices:
        return
    size = int(size_of(ctx, chosen.devices, "size", "cpu_size"))
    results: list[CheckResult] = []
    for precision in ctx.options["precisions"]:
        figures = []
        for dev in chosen.devices:
            note(f"deep.gemm {precision} {dev.component}")
            got = gemm.measure(chosen.torch, dev, precision, size, ctx.options["repeats"])
            figures.append(
                judge.Figure(
                    dev.component, got.tflops, got.error, {"size": size, "model": dev.name}
                )
            )
        ref = reference(ctx, chosen.devices[0], precision, ctx.options["min_fraction"])
        results += judge.judge("deep.gemm", f"{precision} GEMM", "TFLOP/s", figures, ref)
    seconds = float(size_of(ctx, chosen.devices, "sustain_s", "cpu_sustain_s"))
    if seconds > 0:
        precision = ctx.options["sustain_precision"]
        note(f"deep.gemm sustained {precision} {seconds:g}s on {len(chosen.devices)} devices")
        held = gemm.sustained(chosen.torch, chosen.devices, precision, size, seconds,
                              throttle_reader(ctx) if chosen.present else None)  # fmt: skip
        ref = reference(ctx, chosen.devices[0], precision, ctx.options["min_fraction"])
        results += judge.judge_sustained(
            "deep.gemm", f"{precision} GEMM", "TFLOP/s", _held(held), ref,
            max_drop=float(ctx.options["max_drop"]), seconds=held[0].seconds,
        )  # fmt: skip
    yield from judge.merge_by_component("deep.gemm", results)


# --- deep.membw -----------------------------------------------------------------------


@check(
    "deep.membw",
    tier="deep",
    group=GROUP,
    summary="device-memory (HBM) copy bandwidth per GPU vs the datasheet (or the median)",
    phases=("manual",),
    timeout_s=150.0,
    severity="medium",
    remedy="admin",
    memory_limit_mb=0,
    options={
        "device": DEVICE,
        "mib": Option(int, 2048, "buffer size on a GPU (MiB); well above the L2 cache"),
        "cpu_mib": Option(int, 16, "buffer size on the CPU (MiB)"),
        "repeats": REPEATS,
        "min_fraction": min_fraction(0.7, "a device copy reaches ~85-90% of HBM peak"),
        "median_fraction": MEDIAN_FRACTION,
        "expected": Option((int, float), 0, "expected GB/s (0: the table's HBM figure)"),
        "sustain_s": Option(
            (int, float), 20, "seconds of sustained copies on all GPUs at once (0: none)"
        ),
        "cpu_sustain_s": Option((int, float), 0.5, "seconds of sustained copies on the CPU"),
        "max_drop": MAX_DROP,
    },
)
@explains_table
def deep_membw(ctx: CheckContext) -> Iterator[CheckResult]:
    """Copies a buffer far larger than the L2 cache within each GPU's memory and reports
    GB/s (read plus write), then keeps every GPU copying for `sustain_s` seconds. Low
    bandwidth with no ECC error is HBM running at reduced clocks, memory throttling, or
    remapped/degraded stacks. Fix: check clocks and `nvidia-smi -q -d ROW_REMAPPER`; reset
    the GPU; a GPU that stays slow is an RMA."""
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import membw

    chosen = select_devices(ctx, "deep.membw")
    yield from chosen.skipped
    if chosen.torch is None or not chosen.devices:
        return
    nbytes = int(size_of(ctx, chosen.devices, "mib", "cpu_mib")) * MIB
    figures = []
    for dev in chosen.devices:
        note(f"deep.membw {dev.component}")
        got = membw.measure(chosen.torch, dev, nbytes, ctx.options["repeats"])
        figures.append(judge.Figure(dev.component, got.gbps, values={"bytes": got.nbytes}))
    ref = reference(ctx, chosen.devices[0], "hbm_gbps", ctx.options["min_fraction"])
    results = judge.judge("deep.membw", "memory copy", "GB/s", figures, ref)
    seconds = float(size_of(ctx, chosen.devices, "sustain_s", "cpu_sustain_s"))
    if seconds > 0:
        note(f"deep.membw sustained {seconds:g}s on {len(chosen.devices)} devices")
        held = membw.sustained(chosen.torch, chosen.devices, nbytes, seconds,
                               throttle_reader(ctx) if chosen.present else None)  # fmt: skip
        results += judge.judge_sustained(
            "deep.membw", "memory copy", "GB/s", _held(held), ref,
            max_drop=float(ctx.options["max_drop"]), seconds=held[0].seconds,
        )  # fmt: skip
    yield from judge.merge_by_component("deep.membw", results)


# --- deep.hostdev ---------------------------------------------------------------------


@check(
    "deep.hostdev",
    tier="deep",
    group=GROUP,
    summary="pinned host<->device bandwidth per GPU vs its PCIe link (or the median)",
    phases=("manual",),
    timeout_s=120.0,
    severity="medium",
    remedy="check-cable",
    memory_limit_mb=0,
    options={
        "device": DEVICE,
        "mib": Option(int, 512, "bytes per copy on a GPU (MiB)"),
        "cpu_mib": Option(int, 16, "bytes per copy on the CPU (MiB)"),
        "repeats": REPEATS,
        "min_fraction": min_fraction(0.65, "pinned copies reach ~80-85% of the PCIe link"),
        "median_fraction": MEDIAN_FRACTION,
        "expected": Option((int, float), 0, "expected GB/s each way (0: the table's PCIe x16)"),
    },
)
@explains_table
def deep_hostdev(ctx: CheckContext) -> Iterator[CheckResult]:
    """Copies pinned host memory to each GPU and back and reports GB/s each way, with the
    process bound to the GPU's own NUMA node (sysfs numa_node) so that the buffers live next
    to it. Half the expected figure is a link that trained at x8 or one generation down
    under load (a riser, a retimer, a dirty connector). Fix: compare with `nvidia-smi -q -d
    PCI` under load (gpu.pcie sees the idle link), reseat the card or riser, check BIOS PCIe
    settings."""
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import hostdev

    chosen = select_devices(ctx, "deep.hostdev")
    yield from chosen.skipped
    if chosen.torch is None or not chosen.devices:
        return
    nbytes = int(size_of(ctx, chosen.devices, "mib", "cpu_mib")) * MIB
    results: list[CheckResult] = []
    measured = []
    for dev in chosen.devices:
        note(f"deep.hostdev {dev.component}")
        got = hostdev.measure(chosen.torch, dev, nbytes, ctx.options["repeats"],
                              ctx.settings.sysfs_root)  # fmt: skip
        measured.append((dev, got))
    ref = reference(ctx, chosen.devices[0], "host_gbps", ctx.options["min_fraction"])
    for direction in ("h2d", "d2h"):
        figures = [
            judge.Figure(
                dev.component,
                getattr(got, f"{direction}_gbps"),
                values={
                    "bytes": got.nbytes,
                    "pinned": got.pinned,
                    "numa_node": got.numa_node,
                    "bound_cpus": len(got.bound_cpus),
                    "unbound": got.unbound_why,
                },
            )
            for dev, got in measured
        ]
        label = "host->device" if direction == "h2d" else "device->host"
        results += judge.judge("deep.hostdev", label, "GB/s", figures, ref)
    yield from judge.merge_by_component("deep.hostdev", results)
