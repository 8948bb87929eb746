"""Deep GPU checks: GEMM throughput, memory, host<->device and peer bandwidth, SDC.

Each check measures through `nodecheck.probes.active` (PyTorch, CUDA on a GPU node, the CPU
here) and judges the figures with `judge.py` against the model's datasheet row in
`expected.py`, or against the node's median GPU for a model not in the table. All of
them run in group "deep": one after another in one probe child, so that no two
measurements share a device at once, each cut at its own timeout.

Before touching a GPU, each check reads its compute processes through the NVML adapter:
a GPU in use by anyone is not measured (SKIP, naming the pids), because the measurement
would disturb that job and its load would make our figures wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any

from nodecheck.checks.context import CheckContext
from nodecheck.checks.deep.expected import GpuSpec, lookup, table_text
from nodecheck.checks.registry import Option, check
from nodecheck.probes import nvml
from nodecheck.run.progress import note
from nodecheck.run.results import CheckResult, Status

if TYPE_CHECKING:
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active.device import Device

# Every hook imports this module to register the deep checks; the judgement (and the
# statistics module under it) is imported by the check functions, in the probe process's
# own thread, where a deep check runs.

GROUP = "deep"
MIB = 1024**2

DEVICE = Option(
    str,
    "auto",
    "'auto' (CUDA GPUs, else the CPU), 'cuda' or 'cpu'",
    choices=("auto", "cuda", "cpu"),
)
REPEATS = Option(int, 5, "timed repeats per figure (the median counts), after one warm-up")
MEDIAN_FRACTION = Option(
    float, 0.8, "for a model not in the table: FAIL a device below this share of the median"
)


def _min_fraction(default: float, why: str) -> Option:
    return Option(float, default, f"FAIL below this share of the datasheet figure ({why})")


@dataclass(frozen=True)
class Selected:
    """The devices a deep check will measure, and the results for those it will not."""

    torch: ModuleType | None
    devices: tuple[Device, ...]
    skipped: tuple[CheckResult, ...]


def select_devices(ctx: CheckContext, check_id: str) -> Selected:
    """torch, the devices, minus any GPU that runs someone's compute processes."""
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import device as active

    try:
        torch = active.load_torch()
        found = active.find_devices(torch, ctx.options.get("device", "auto"))
    except active.ActiveUnavailable as exc:
        return Selected(None, (), (CheckResult(check_id, Status.ERROR, str(exc)),))
    gpus = [d for d in found if d.kind == "cuda"]
    if not gpus:
        return Selected(torch, tuple(found), ())
    note("deep: NVML compute processes")
    snap = nvml.collect_fresh(ctx.settings.nvml)
    if not snap.available:
        why = f"cannot tell whether the GPUs are in use: NVML {snap.init_error}"
        return Selected(torch, (), (CheckResult(check_id, Status.ERROR, why),))
    by_bus = {(g.pci_bus_id or "").upper(): g for g in snap.gpus}
    chosen, skipped = [], []
    for dev in gpus:
        gpu = by_bus.get(dev.pci_bus_id.upper())
        if gpu is None or gpu.processes is None:
            why = "not measured: NVML does not list this GPU's processes"
            skipped.append(CheckResult(check_id, Status.ERROR, why, dev.component))
            continue
        # Name it as NVML (and every gpu.* check) numbers it, whatever CUDA_VISIBLE_DEVICES did.
        dev = replace(dev, number=gpu.index)
        others = [p.pid for p in gpu.processes]
        if others:
            skipped.append(judge.refused(check_id, dev.component, others))
        else:
            chosen.append(dev)
    return Selected(torch, tuple(chosen), tuple(skipped))


def reference(ctx: CheckContext, dev: Device, figure: str, min_fraction: float) -> judge.Reference:
    """The datasheet figure `figure` of dev's model (or the `expected` option), if any."""
    from nodecheck.checks.deep import judge

    override = float(ctx.options.get("expected", 0) or 0)
    spec: GpuSpec | None = lookup(dev.name)
    median_fraction = float(ctx.options.get("median_fraction", 0.8))
    if override > 0:
        return judge.Reference(override, "configured expected", min_fraction, median_fraction)
    if spec is None:
        return judge.Reference(None, f"{dev.name} not in the table", 0.0, median_fraction)
    value = spec.tflops.get(figure) if figure in spec.tflops else getattr(spec, figure)
    return judge.Reference(float(value) or None, f"{spec.model} datasheet", min_fraction,
                           median_fraction)  # fmt: skip


def _explains_table(func: Callable[..., Iterator[CheckResult]]) -> Callable[..., Any]:
    """Append the expected-figures table, with its sources, to the check's explanation
    (`nodecheck explain`), indented as the docstring so that it is cleaned up with it."""
    table = "\n".join(f"    {line}" for line in table_text().splitlines())
    func.__doc__ = f"{func.__doc__ or ''}\n\n    Expected figures per GPU model:\n{table}"
    return func


def _size(ctx: CheckContext, devices: tuple[Device, ...], gpu_key: str, cpu_key: str) -> int:
    on_cpu = all(d.kind == "cpu" for d in devices)
    return int(ctx.options[cpu_key] if on_cpu else ctx.options[gpu_key])


# --- deep.gemm ------------------------------------------------------------------------


@check(
    "deep.gemm",
    tier="deep",
    group=GROUP,
    summary="dense GEMM TFLOP/s per GPU and precision vs the model's datasheet (or the median)",
    phases=("manual",),
    timeout_s=180.0,
    severity="medium",
    remedy="admin",
    memory_limit_mb=0,
    options={
        "device": DEVICE,
        "precisions": Option(list, ["bf16", "fp16", "tf32"], "precisions to measure", item=str),
        "size": Option(int, 8192, "square matrix size on a GPU"),
        "cpu_size": Option(int, 256, "square matrix size on the CPU (tests, CI)"),
        "repeats": REPEATS,
        "min_fraction": _min_fraction(0.6, "cuBLAS reaches 60-80% of the tensor-core peak"),
        "median_fraction": MEDIAN_FRACTION,
        "expected": Option((int, float), 0, "expected TFLOP/s for every precision (0: table)"),
    },
)
@_explains_table
def deep_gemm(ctx: CheckContext) -> Iterator[CheckResult]:
    """Multiplies two square matrices on each GPU in bf16, fp16 and tf32 and reports TFLOP/s
    (2*n^3 per multiply, the median of the timed repeats). A GPU below its share of the
    datasheet figure is throttling (power, clocks, thermals), has a degraded tensor-core
    path, or sits on a board that starves it. Fix: `nvidia-smi -q -d PERFORMANCE` for
    throttle reasons, check cooling and power capping; a GPU that stays slow is an RMA."""
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import gemm

    chosen = select_devices(ctx, "deep.gemm")
    yield from chosen.skipped
    if chosen.torch is None or not chosen.devices:
        return
    size = _size(ctx, chosen.devices, "size", "cpu_size")
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
    yield from judge.merge_by_component("deep.gemm", results)


# --- deep.membw -----------------------------------------------------------------------


@check(
    "deep.membw",
    tier="deep",
    group=GROUP,
    summary="device-memory (HBM) copy bandwidth per GPU vs the datasheet (or the median)",
    phases=("manual",),
    timeout_s=120.0,
    severity="medium",
    remedy="admin",
    memory_limit_mb=0,
    options={
        "device": DEVICE,
        "mib": Option(int, 2048, "buffer size on a GPU (MiB); well above the L2 cache"),
        "cpu_mib": Option(int, 16, "buffer size on the CPU (MiB)"),
        "repeats": REPEATS,
        "min_fraction": _min_fraction(0.7, "a device copy reaches ~85-90% of HBM peak"),
        "median_fraction": MEDIAN_FRACTION,
        "expected": Option((int, float), 0, "expected GB/s (0: the table's HBM figure)"),
    },
)
@_explains_table
def deep_membw(ctx: CheckContext) -> Iterator[CheckResult]:
    """Copies a buffer far larger than the L2 cache within each GPU's memory and reports
    GB/s (read plus write). Low bandwidth with no ECC error is HBM running at reduced
    clocks, memory throttling, or remapped/degraded stacks. Fix: check clocks and
    `nvidia-smi -q -d ROW_REMAPPER`; reset the GPU; a GPU that stays slow is an RMA."""
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import membw

    chosen = select_devices(ctx, "deep.membw")
    yield from chosen.skipped
    if chosen.torch is None or not chosen.devices:
        return
    nbytes = _size(ctx, chosen.devices, "mib", "cpu_mib") * MIB
    figures = []
    for dev in chosen.devices:
        note(f"deep.membw {dev.component}")
        got = membw.measure(chosen.torch, dev, nbytes, ctx.options["repeats"])
        figures.append(judge.Figure(dev.component, got.gbps, values={"bytes": got.nbytes}))
    ref = reference(ctx, chosen.devices[0], "hbm_gbps", ctx.options["min_fraction"])
    yield from judge.judge("deep.membw", "memory copy", "GB/s", figures, ref)


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
        "min_fraction": _min_fraction(0.65, "pinned copies reach ~80-85% of the PCIe link"),
        "median_fraction": MEDIAN_FRACTION,
        "expected": Option((int, float), 0, "expected GB/s each way (0: the table's PCIe x16)"),
    },
)
@_explains_table
def deep_hostdev(ctx: CheckContext) -> Iterator[CheckResult]:
    """Copies pinned host memory to each GPU and back and reports GB/s each way. Half the
    expected figure is a link that trained at x8 or one generation down under load (a
    riser, a retimer, a dirty connector) or a GPU on the far NUMA node. Fix: compare with
    `nvidia-smi -q -d PCI` under load (gpu.pcie sees the idle link), reseat the card or
    riser, check BIOS PCIe settings."""
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import hostdev

    chosen = select_devices(ctx, "deep.hostdev")
    yield from chosen.skipped
    if chosen.torch is None or not chosen.devices:
        return
    nbytes = _size(ctx, chosen.devices, "mib", "cpu_mib") * MIB
    results: list[CheckResult] = []
    measured = []
    for dev in chosen.devices:
        note(f"deep.hostdev {dev.component}")
        measured.append((dev, hostdev.measure(chosen.torch, dev, nbytes, ctx.options["repeats"])))
    ref = reference(ctx, chosen.devices[0], "host_gbps", ctx.options["min_fraction"])
    for direction in ("h2d", "d2h"):
        figures = [
            judge.Figure(
                dev.component,
                getattr(got, f"{direction}_gbps"),
                values={"bytes": got.nbytes, "pinned": got.pinned},
            )
            for dev, got in measured
        ]
        label = "host->device" if direction == "h2d" else "device->host"
        results += judge.judge("deep.hostdev", label, "GB/s", figures, ref)
    yield from judge.merge_by_component("deep.hostdev", results)


# --- deep.p2p -------------------------------------------------------------------------


@check(
    "deep.p2p",
    tier="deep",
    group=GROUP,
    summary="peer-to-peer (NVLink/PCIe) bandwidth per GPU pair vs the datasheet (or median)",
    phases=("manual",),
    timeout_s=240.0,
    severity="medium",
    remedy="admin",
    memory_limit_mb=0,
    options={
        "device": DEVICE,
        "mib": Option(int, 256, "bytes per copy (MiB)"),
        "repeats": REPEATS,
        "min_fraction": _min_fraction(0.6, "copy engines reach ~70-85% of NVLink peak"),
        "median_fraction": MEDIAN_FRACTION,
        "expected": Option((int, float), 0, "expected bidirectional GB/s per pair (0: table)"),
    },
)
@_explains_table
def deep_p2p(ctx: CheckContext) -> Iterator[CheckResult]:
    """Copies between every pair of GPUs, both ways at once, and reports GB/s per pair
    (`gpu0-gpu3`). On NVSwitch systems (HGX/DGX) every pair should reach the GPU's NVLink
    bandwidth; a slow pair is a bad NVLink or NVSwitch port, and the GPU common to all slow
    pairs is the culprit. Without direct peer access the copy goes through the host and
    is judged against the median only. Needs two GPUs: SKIP with fewer."""
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import p2p

    chosen = select_devices(ctx, "deep.p2p")
    yield from chosen.skipped
    if chosen.torch is None:
        return
    if len(chosen.devices) < 2:
        what = "the CPU" if any(d.kind == "cpu" for d in chosen.devices) else "GPU"
        msg = f"needs at least 2 GPUs; {len(chosen.devices)} measurable here ({what})"
        yield CheckResult("deep.p2p", Status.SKIP, msg)
        return
    nbytes = int(ctx.options["mib"]) * MIB
    figures = []
    direct = True
    for first, second in p2p.pairs(list(chosen.devices)):
        note(f"deep.p2p {first.component}-{second.component}")
        got = p2p.measure_pair(chosen.torch, first, second, nbytes, ctx.options["repeats"])
        direct = direct and got.peer_access
        figures.append(
            judge.Figure(
                got.component,
                got.bidir_gbps,
                values={"oneway_gbps": round(got.oneway_gbps, 3), "peer_access": got.peer_access},
            )
        )
    ref = reference(ctx, chosen.devices[0], "nvlink_gbps", ctx.options["min_fraction"])
    if not direct and not ctx.options.get("expected"):
        # Copies staged through host memory cannot reach NVLink figures; compare pairs only.
        ref = replace(ref, expected=None, source="no direct peer access")
    yield from judge.judge("deep.p2p", "peer copy (both ways)", "GB/s", figures, ref)
