"""deep.sdc: silent data corruption, by comparing one deterministic GEMM across devices.

The probe (`nodecheck.probes.active.sdc`) digests the same seeded float32 product on every
device, several times. The judgement here is pure: within one GPU model every digest must
be the same. A device whose repeats disagree is unstable; a device that disagrees with the
majority of its model computes wrong numbers. With two devices that disagree nobody can
say which is wrong, so both fail (the node is wrong either way).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from nodecheck.checks.deep.gpu import DEVICE, GROUP, select_devices
from nodecheck.context import CheckContext
from nodecheck.progress import note
from nodecheck.registry import Option, check
from nodecheck.results import CheckResult, Status

CID = "deep.sdc"


@dataclass(frozen=True)
class Outcome:
    """One device's digests and the model it is compared within."""

    component: str
    model: str
    digests: Sequence[str]


def judge_digests(outcomes: Sequence[Outcome]) -> list[CheckResult]:
    """PASS where a device agrees with itself and with its model's majority; FAIL naming how."""
    by_model: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_model.setdefault(outcome.model, []).append(outcome)
    results = []
    for model, group in by_model.items():
        votes = Counter(o.digests[0] for o in group if len(set(o.digests)) == 1)
        top = votes.most_common(2)
        # A majority needs more votes than any rival digest; a tie is no majority.
        majority = top[0][0] if top and (len(top) == 1 or top[0][1] > top[1][1]) else None
        for o in group:
            values: Mapping[str, object] = {"digests": list(o.digests), "model": model}
            if len(set(o.digests)) > 1:
                msg = f"GEMM result changed between repeats ({len(set(o.digests))} different)"
                results.append(CheckResult(CID, Status.FAIL, msg, o.component, dict(values)))
            elif majority is None and len(group) > 1:
                msg = f"GEMM results of {len(group)} {model} devices disagree; no majority"
                results.append(CheckResult(CID, Status.FAIL, msg, o.component, dict(values)))
            elif majority is not None and o.digests[0] != majority:
                agree = votes[majority]
                msg = f"GEMM result differs from the other {agree} {model} device(s)"
                results.append(CheckResult(CID, Status.FAIL, msg, o.component, dict(values)))
            else:
                peers = len(group) - 1
                msg = f"{len(o.digests)} repeats bit-identical" + (
                    f", same as {peers} other device(s)" if peers else ""
                )
                results.append(CheckResult(CID, Status.PASS, msg, o.component, dict(values)))
    return results


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
    from nodecheck.probes.active import sdc

    chosen = select_devices(ctx, CID)
    yield from chosen.skipped
    if chosen.torch is None or not chosen.devices:
        return
    on_cpu = all(d.kind == "cpu" for d in chosen.devices)
    size = int(ctx.options["cpu_size"] if on_cpu else ctx.options["size"])
    note(f"deep.sdc {len(chosen.devices)} devices")
    measured = sdc.measure(chosen.torch, list(chosen.devices), size, ctx.options["repeats"])
    yield from judge_digests(
        [Outcome(m.device.component, m.device.name, m.digests) for m in measured]
    )
