"""Host<->device bandwidth per GPU over PCIe (GB/s each way), from pinned host memory.

Pinned (page-locked) memory is what DMA engines copy at full link speed; a link that
trained down to x8 or to an older generation, or a riser that retrains under load, shows
here as half the figure or less. The copies run bound to the GPU's own NUMA node
(`numa.locality`), so the pinned buffers are allocated there: a process that happened to
run on the far socket would otherwise copy across the inter-socket link and blame the GPU.
On the CPU there is no link: the same copies run between two host buffers, so the code
path is exercised and the figure is plain memory bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from nodecheck.probes.active import numa
from nodecheck.probes.active.device import GB, Device, measuring, time_per_call


@dataclass(frozen=True)
class HostDevFigure:
    """Host-to-device and device-to-host bandwidth of one device, `nbytes` per copy, and
    where the copies ran: the device's NUMA node and the CPUs the process was bound to."""

    h2d_gbps: float
    d2h_gbps: float
    nbytes: int
    pinned: bool
    numa_node: int | None = None
    bound_cpus: frozenset[int] = field(default_factory=frozenset)
    unbound_why: str = ""


def measure(
    torch: ModuleType, device: Device, nbytes: int, repeats: int, sysfs_root: Path = Path("/sys")
) -> HostDevFigure:
    where = numa.locality(sysfs_root, device.sysfs_bdf)
    with numa.bound_to(where.cpus) as cpus, measuring(torch):
        # Allocated inside the binding: first touch puts the pinned pages on this node.
        count = max(1, nbytes // 4)
        pinned = device.kind == "cuda"
        host = torch.ones(count, dtype=torch.float32, pin_memory=pinned)
        host_back = torch.empty(count, dtype=torch.float32, pin_memory=pinned)
        dev = torch.empty(count, dtype=torch.float32, device=device.torch_name)
        to_dev = time_per_call(torch, device, lambda: dev.copy_(host, non_blocking=True), repeats)
        to_host = time_per_call(
            torch, device, lambda: host_back.copy_(dev, non_blocking=True), repeats
        )
        moved = count * 4
        bound = cpus if where.cpus else frozenset()
        why = where.why or ("" if bound else "none of the node's CPUs allowed to this process")
        return HostDevFigure(moved / to_dev / GB, moved / to_host / GB, moved, pinned,
                             where.node, bound, why)  # fmt: skip
