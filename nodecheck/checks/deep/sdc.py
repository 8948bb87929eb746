"""deep.sdc: silent data corruption, by comparing one deterministic GEMM across devices.

The probe (`nodecheck.probes.active.sdc`) digests the same seeded product on every device,
several times, in every precision training uses (fp32, and the tensor-core paths tf32,
bf16 and fp16), with torch's deterministic algorithms on; `judge.judge_digests` compares
the digests of each precision, and a device's precisions are merged into its one result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from nodecheck.checks.context import CheckContext
from nodecheck.checks.deep.common import DEVICE, GROUP, select_devices
from nodecheck.checks.registry import Option, check
from nodecheck.core.progress import note
from nodecheck.core.results import CheckResult

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
        "size": Option(int, 4096, "square matrix size on a GPU"),
        "cpu_size": Option(int, 128, "square matrix size on the CPU"),
        "repeats": Option(int, 3, "times each device computes the product"),
        "precisions": Option(
            list,
            ["fp32", "tf32", "bf16", "fp16"],
            "precisions (hardware paths) to compare",
            item=str,
        ),
    },
)
def deep_sdc(ctx: CheckContext) -> Iterator[CheckResult]:
    """Multiplies the same seeded matrices on every GPU, several times, in fp32 (TF32 off)
    and on the tensor cores (tf32, bf16, fp16), with deterministic algorithms, and compares
    SHA-256 digests of the products per precision. Within one model the digests must all be
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
    precisions = list(ctx.options["precisions"])
    measured = sdc.measure(chosen.torch, list(chosen.devices), size, ctx.options["repeats"],
                           precisions=precisions)  # fmt: skip
    results: list[CheckResult] = []
    for precision in precisions:
        judged = judge.judge_digests(
            [judge.Outcome(m.device.component, m.device.name, m.digests)
             for m in measured if m.precision == precision]
        )  # fmt: skip
        results += [
            replace(r, message=f"{precision}: {r.message}",
                    values={**r.values, "metric": precision, "size": size})
            for r in judged
        ]  # fmt: skip
    yield from judge.merge_by_component(CID, results)
