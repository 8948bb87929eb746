"""Peer-to-peer bandwidth between GPU pairs (GB/s), over NVLink or PCIe as the node has.

Each unordered pair is measured both ways at once (a copy i->j and j->i in flight on two
streams), which is how NVIDIA quotes NVLink bandwidth (bidirectional, per GPU pair link
set), and one way. A pair below its peers is a bad NVLink, a link down to PCIe, or a
switch port; the check judges, this module only measures.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from types import ModuleType

from nodecheck.probes.active.device import GB, Device, measuring, time_per_call


@dataclass(frozen=True)
class PairFigure:
    """One GPU pair: one-way (first to second) and bidirectional copy bandwidth."""

    first: Device
    second: Device
    oneway_gbps: float
    bidir_gbps: float
    peer_access: bool  # direct P2P (NVLink or PCIe P2P) rather than staged through the host

    @property
    def component(self) -> str:
        return f"{self.first.component}-{self.second.component}"


def pairs(devices: list[Device]) -> list[tuple[Device, Device]]:
    return list(itertools.combinations(devices, 2))


def measure_pair(
    torch: ModuleType, first: Device, second: Device, nbytes: int, repeats: int
) -> PairFigure:
    with measuring(torch):
        count = max(1, nbytes // 4)
        on_first = torch.ones(count, dtype=torch.float32, device=first.torch_name)
        on_second = torch.ones(count, dtype=torch.float32, device=second.torch_name)
        recv_second = torch.empty_like(on_second)
        recv_first = torch.empty_like(on_first)
        both = (first, second)
        oneway = time_per_call(torch, both, lambda: recv_second.copy_(on_first), repeats)

        def bidirectional() -> None:
            if first.kind == "cuda":
                with torch.cuda.stream(torch.cuda.Stream(first.index)):
                    recv_second.copy_(on_first, non_blocking=True)
                with torch.cuda.stream(torch.cuda.Stream(second.index)):
                    recv_first.copy_(on_second, non_blocking=True)
            else:
                recv_second.copy_(on_first)
                recv_first.copy_(on_second)

        bidir = time_per_call(torch, both, bidirectional, repeats)
        access = first.kind == "cuda" and torch.cuda.can_device_access_peer(
            first.index, second.index
        )
        moved = count * 4
        return PairFigure(first, second, moved / oneway / GB, 2 * moved / bidir / GB, access)
