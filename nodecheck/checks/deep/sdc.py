"""deep.sdc: silent data corruption, by comparing one deterministic GEMM across devices.

The probe (`nodecheck.probes.active.sdc`) digests the same seeded float32 product on every
device, several times; `judge.judge_digests` compares the digests.
"""

from __future__ import annotations

from collections.abc import Iterator

from nodecheck.checks.context import CheckContext
from nodecheck.checks.deep.gpu import DEVICE, GROUP, select_devices
from nodecheck.checks.registry import Option, check
from nodecheck.run.progress import note
from nodecheck.run.results import CheckResult

CID = "deep.sdc"


@check(
    CID,
    tier="deep",
    group=GROUP,
    summary="silent data corruption: one seeded GEMM gives bit-identical results on every GPU",
    phases=("manual",),
    timeout_s=120.0,
    severity="critical",
    remedy="replace",
    memory_limit_mb=0,
    options={
        "device": DEVICE,
        "size": Option(int, 4096, "square float32 matrix size on a GPU"),
        "cpu_size": Option(int, 128, "square matrix size on the CPU"),
        "repeats": Option(int, 3, "times each device computes the product"),
    },
)
def deep_sdc(ctx: CheckContext) -> Iterator[CheckResult]:
    """Multiplies the same seeded float32 matrices (TF32 off) on every GPU, several times,
    and compares SHA-256 digests of the products. Within one model the digests must all be
    equal. A GPU that disagrees, or whose repeats differ, returns wrong numbers without any
    error: silent data corruption, which ECC and XIDs do not show. Fix: take it out of
    service; rerun to confirm, then RMA the GPU."""
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import sdc

    chosen = select_devices(ctx, CID)
    yield from chosen.skipped
    if chosen.torch is None or not chosen.devices:
        return
    on_cpu = all(d.kind == "cpu" for d in chosen.devices)
    size = int(ctx.options["cpu_size"] if on_cpu else ctx.options["size"])
    note(f"deep.sdc {len(chosen.devices)} devices")
    measured = sdc.measure(chosen.torch, list(chosen.devices), size, ctx.options["repeats"])
    yield from judge.judge_digests(
        [judge.Outcome(m.device.component, m.device.name, m.digests) for m in measured]
    )
