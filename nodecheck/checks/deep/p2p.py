"""deep.p2p: peer bandwidth per GPU pair, judged against that pair's own link.

A GPU's datasheet NVLink figure is its total over all its links. On an NVSwitch system
(HGX/DGX) every pair gets all of them; on bridged PCIe cards only the bridged pairs have
NVLink at all, and a 4-way bridge splits a GPU's links over three peers. So each pair is
judged against what joins *it*, from `nvidia-smi topo -m` (probes/active/topology.py):

| the pair's path | expected (both directions at once) | share |
| --- | --- | --- |
| NV<n>: n NVLinks (switch or bridge) | n x the model's per-link figure | min_fraction |
| PIX / PXB: PCIe switch, peer access | PCIe x16 of the model, both ways | pcie_min_fraction |
| PHB / NODE / SYS, or no peer access | the median of such pairs on the node | median_fraction |

Paths through the CPU are set by the CPU's root complex and inter-socket link, not by the
GPU, so only the node's own pairs say what is normal there. Without the matrix (no
nvidia-smi, or it failed), pairs are compared with the node's median only, and say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
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
    nothing_measured,
    select_devices,
)
from nodecheck.checks.deep.expected import GpuSpec, lookup
from nodecheck.checks.registry import Option, check
from nodecheck.core.progress import note
from nodecheck.core.results import CheckResult, Status

if TYPE_CHECKING:
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active.topology import Link

CID = "deep.p2p"


@dataclass(frozen=True)
class PairRef:
    """What one pair is judged against: a figure (None: the median of its class) and why."""

    expected: float | None
    source: str
    fraction: float
    group: str  # pairs are compared with the median of the same group


def pair_reference(
    link: Link | None, peer_access: bool, spec: GpuSpec | None, opts: dict[str, float]
) -> PairRef:
    """The reference of one pair from its link (pure: table-tested)."""
    if opts.get("expected"):
        return PairRef(float(opts["expected"]), "configured expected", opts["min_fraction"], "all")
    if link is None:
        return PairRef(None, "topology unknown: node median", 0.0, "unknown")
    if link.kind == "nvlink" and spec is not None:
        figure = link.nvlinks * spec.nvlink_link_gbps
        source = f"{link.nvlinks} NVLinks x {spec.nvlink_link_gbps:g} GB/s ({spec.model})"
        return PairRef(figure, source, opts["min_fraction"], link.path)
    if link.kind == "nvlink":
        return PairRef(None, f"{link.path}, model not in the table: node median", 0.0, link.path)
    if link.path in ("PIX", "PXB") and peer_access and spec is not None and spec.host_gbps:
        figure = 2 * spec.host_gbps
        source = f"PCIe gen{spec.pcie_gen} x16 both ways via {link.path} ({spec.model})"
        return PairRef(figure, source, opts["pcie_min_fraction"], link.path)
    why = "no peer access (staged through the host)" if not peer_access else link.path
    return PairRef(None, f"{why}: node median", 0.0, f"cpu-path:{peer_access}")


def _topology(ctx: CheckContext) -> tuple[dict[tuple[int, int], Link], str]:
    """The pair matrix, or {} and why not."""
    import os

    from nodecheck.probes.active import tools, topology

    binary = ctx.options["nvidia_smi"]
    if not os.access(binary, os.X_OK):
        return {}, f"{binary} not installed"
    ran = tools.run([binary, "topo", "-m"], float(ctx.options["topo_timeout_s"]))
    links = topology.parse_matrix(ran.stdout)
    if not links:
        tail = (ran.stderr or ran.stdout).strip().splitlines()[-1:] or ["no output"]
        return {}, f"nvidia-smi topo -m gave no matrix (exit {ran.returncode}): {tail[0][:120]}"
    return links, ""


@check(
    CID,
    tier="deep",
    group=GROUP,
    summary="peer-to-peer bandwidth per GPU pair vs that pair's NVLink or PCIe path",
    phases=("manual",),
    timeout_s=240.0,
    severity="medium",
    remedy="admin",
    memory_limit_mb=0,
    options={
        "device": DEVICE,
        "mib": Option(int, 256, "bytes per copy (MiB)"),
        "repeats": REPEATS,
        "min_fraction": min_fraction(0.6, "copy engines reach ~70-85% of NVLink peak"),
        "pcie_min_fraction": Option(
            float, 0.5, "FAIL a PCIe-switch pair below this share of PCIe x16 both ways"
        ),
        "median_fraction": MEDIAN_FRACTION,
        "expected": Option((int, float), 0, "expected bidirectional GB/s per pair (0: link)"),
        "nvidia_smi": Option(str, "/usr/bin/nvidia-smi", "absolute path of nvidia-smi"),
        "topo_timeout_s": Option((int, float), 30, "nvidia-smi topo -m is killed after this"),
    },
)
@explains_table
def deep_p2p(ctx: CheckContext) -> Iterator[CheckResult]:
    """Copies between every pair of GPUs, both ways at once, and reports GB/s per pair
    (`gpu0-gpu3`), each judged against the link between those two GPUs as `nvidia-smi topo
    -m` shows it: n NVLinks (NV<n>) times the model's per-link figure; PCIe x16 through a
    PCIe switch; the node's median for paths through the CPU. A slow NVLink pair is a bad
    link, bridge or NVSwitch port, and the GPU common to all slow pairs is the culprit.
    Needs two GPUs: SKIP with fewer."""
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import p2p

    chosen = select_devices(ctx, CID)
    yield from chosen.skipped
    if chosen.torch is None:
        return
    if len(chosen.devices) < 2:
        if chosen.present >= 2 and chosen.devices:  # pairs exist, none measured: not a pass
            error = nothing_measured(CID, chosen.present - 1, chosen.present)
            msg = f"measured 1 of {chosen.present} GPUs: no pair to measure; " + error.message
            yield CheckResult(CID, Status.ERROR, msg[:300], values=error.values)
        if chosen.present >= 2:
            return
        what = "the CPU" if any(d.kind == "cpu" for d in chosen.devices) else "GPU"
        msg = f"needs at least 2 GPUs; {len(chosen.devices)} measurable here ({what})"
        yield CheckResult(CID, Status.SKIP, msg)
        return
    links, why = _topology(ctx)
    opts = {k: float(ctx.options[k]) for k in
            ("min_fraction", "pcie_min_fraction", "expected")}  # fmt: skip
    spec = lookup(chosen.devices[0].name)
    nbytes = int(ctx.options["mib"]) * MIB
    groups: dict[str, tuple[PairRef, list[judge.Figure]]] = {}
    for first, second in p2p.pairs(list(chosen.devices)):
        note(f"deep.p2p {first.component}-{second.component}")
        got = p2p.measure_pair(chosen.torch, first, second, nbytes, ctx.options["repeats"])
        key = (min(first.nvml_index, second.nvml_index), max(first.nvml_index, second.nvml_index))
        link = links.get(key)
        ref = pair_reference(link, got.peer_access, spec, opts)
        values = {
            "oneway_gbps": round(got.oneway_gbps, 3),
            "peer_access": got.peer_access,
            "path": link.path if link else None,
            "topology": why or "nvidia-smi topo -m",
        }
        groups.setdefault(ref.group + ref.source, (ref, []))[1].append(
            judge.Figure(got.component, got.bidir_gbps, values=values)
        )  # fmt: skip
    median_fraction = float(ctx.options["median_fraction"])
    for ref, figures in groups.values():
        reference = judge.Reference(ref.expected, ref.source, ref.fraction, median_fraction)
        yield from judge.judge(CID, "peer copy (both ways)", "GB/s", figures, reference)
