"""What the deep GPU checks share: the devices they may measure, the reference figures, the
options common to all, and the clock-event reasons NVML reports while they load a GPU.

Every hook imports the check modules to register them, so nothing heavy is imported here at
module level: torch, the probes and the judgement are imported inside the functions, in the
probe process where a deep check runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any

from nodecheck.checks.context import CheckContext
from nodecheck.checks.deep.expected import GpuSpec, lookup, table_text
from nodecheck.checks.registry import Option
from nodecheck.core.progress import note
from nodecheck.core.results import CheckResult, Status
from nodecheck.probes import nvml

if TYPE_CHECKING:
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active.device import Device

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


def min_fraction(default: float, why: str) -> Option:
    return Option(float, default, f"FAIL below this share of the datasheet figure ({why})")


@dataclass(frozen=True)
class Selected:
    """The devices a deep check will measure, and the results for those it will not.
    `present` counts the GPUs torch found, measurable or not."""

    torch: ModuleType | None
    devices: tuple[Device, ...]
    skipped: tuple[CheckResult, ...]
    present: int = 0


def select_devices(ctx: CheckContext, check_id: str) -> Selected:
    """torch, the devices, minus any GPU that runs someone else's compute processes.

    This run's own processes (the probe process, which keeps a CUDA context on every GPU an
    earlier deep check touched, and its children) are not someone else's. When GPUs exist
    and none can be measured, an ERROR says so: a check that measured nothing is never a
    pass, and `validate` returns a node only when no result is FAIL or ERROR."""
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import device as active
    from nodecheck.probes.active import owners

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
        return Selected(torch, (), (CheckResult(check_id, Status.ERROR, why),), len(gpus))
    mine = owners.own_pids(ctx.settings.procfs_root)
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
        others = [p.pid for p in gpu.processes if p.pid not in mine]
        if others:
            skipped.append(judge.refused(check_id, dev.component, others))
        else:
            chosen.append(dev)
    if not chosen:
        skipped.append(nothing_measured(check_id, len(gpus), len(gpus)))
    return Selected(torch, tuple(chosen), tuple(skipped), len(gpus))


def nothing_measured(check_id: str, unmeasured: int, present: int) -> CheckResult:
    """ERROR: GPUs exist and this check measured none (or too few) of them. Not a FAIL
    (nothing says the hardware is bad), and not a SKIP either, which `validate` would take
    for a pass and return an unmeasured node to service."""
    msg = (
        f"measured no GPU: {unmeasured} of {present} not measurable (in use by others' "
        "processes or unreadable): this node is not validated"
    )
    return CheckResult(check_id, Status.ERROR, msg, values={"unmeasured": unmeasured})


def reference(ctx: CheckContext, dev: Device, figure: str, fraction: float) -> judge.Reference:
    """The datasheet figure `figure` of dev's model (or the `expected` option), if any."""
    from nodecheck.checks.deep import judge

    override = float(ctx.options.get("expected", 0) or 0)
    spec: GpuSpec | None = lookup(dev.name)
    median_fraction = float(ctx.options.get("median_fraction", 0.8))
    if override > 0:
        return judge.Reference(override, "configured expected", fraction, median_fraction)
    if spec is None:
        return judge.Reference(None, f"{dev.name} not in the table", 0.0, median_fraction)
    value = spec.tflops.get(figure) if figure in spec.tflops else getattr(spec, figure)
    return judge.Reference(float(value) or None, f"{spec.model} datasheet", fraction,
                           median_fraction)  # fmt: skip


def explains_table(func: Callable[..., Iterator[CheckResult]]) -> Callable[..., Any]:
    """Append the expected-figures table, with its sources, to the check's explanation
    (`nodecheck explain`), indented as the docstring so that it is cleaned up with it."""
    table = "\n".join(f"    {line}" for line in table_text().splitlines())
    func.__doc__ = f"{func.__doc__ or ''}\n\n    Expected figures per GPU model:\n{table}"
    return func


def on_cpu(devices: tuple[Device, ...]) -> bool:
    return all(d.kind == "cpu" for d in devices)


def size_of(ctx: CheckContext, devices: tuple[Device, ...], gpu_key: str, cpu_key: str) -> Any:
    return ctx.options[cpu_key] if on_cpu(devices) else ctx.options[gpu_key]


def throttle_reader(ctx: CheckContext) -> Callable[[], Mapping[str, tuple[str, ...]]]:
    """A reader of NVML's clock-event (throttle) reasons per GPU bus id, to be called while
    the sustained phase keeps the GPUs busy: gpu.clocks reads them idle, where power and
    thermal limits never bite."""
    from nodecheck.probes.nvml.model import CLOCK_EVENT_REASONS

    def read() -> Mapping[str, tuple[str, ...]]:
        snap = nvml.collect_fresh(ctx.settings.nvml)
        out: dict[str, tuple[str, ...]] = {}
        for gpu in snap.gpus:
            mask = gpu.clocks_event_reasons
            if mask is None or not gpu.pci_bus_id:
                continue
            out[gpu.pci_bus_id.upper()] = tuple(
                name for name, bit in CLOCK_EVENT_REASONS.items() if mask & bit
            )
        return out

    return read
