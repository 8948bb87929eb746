"""A GPU's local NUMA node, and running on it.

Pinned host memory for a host<->device copy is allocated (first touched) by the calling
thread, on the NUMA node the kernel's default policy picks: the node of the CPU the thread
runs on. A process that happens to run on the far socket copies across the inter-socket
link, and deep.hostdev would blame the GPU for it. So the copies run with the process bound
to the CPUs of the GPU's own node, read from sysfs:

- /sys/bus/pci/devices/<bdf>/numa_node: the node of the device (-1: the platform does not
  say, e.g. a single-node host or a VM);
- /sys/devices/system/node/node<N>/cpulist: that node's CPUs ("0-27,56-83").

The binding is undone afterwards whatever happens. This module reads and binds; the check
reports what it read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Locality:
    """Where a device sits: its NUMA node (None: unknown) and that node's CPUs."""

    node: int | None
    cpus: frozenset[int]
    why: str = ""  # why it is unknown


def parse_cpulist(text: str) -> frozenset[int]:
    """ "0-3,8,10-11" -> {0, 1, 2, 3, 8, 10, 11}."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return frozenset(cpus)


def locality(sysfs_root: Path, bdf: str) -> Locality:
    """The NUMA node of PCI device `bdf` ("0000:18:00.0") and its CPUs, from sysfs."""
    if not bdf:
        return Locality(None, frozenset(), "no PCI address")
    try:
        node = int((sysfs_root / "bus/pci/devices" / bdf / "numa_node").read_text().strip())
    except (OSError, ValueError) as exc:
        return Locality(None, frozenset(), f"numa_node unreadable: {exc}")
    if node < 0:
        return Locality(None, frozenset(), "the platform reports no NUMA node (-1)")
    try:
        cpus = parse_cpulist((sysfs_root / f"devices/system/node/node{node}/cpulist").read_text())
    except (OSError, ValueError) as exc:
        return Locality(node, frozenset(), f"node{node} cpulist unreadable: {exc}")
    return Locality(node, cpus)


@contextmanager
def bound_to(cpus: frozenset[int]) -> Iterator[frozenset[int]]:
    """Run this process on `cpus` (those of them it may use) until the block ends; yields
    the CPUs it actually runs on. An empty or unusable set leaves the affinity alone."""
    before = os.sched_getaffinity(0)
    usable = frozenset(cpus) & before
    if not usable:
        yield frozenset(before)
        return
    os.sched_setaffinity(0, usable)
    try:
        yield frozenset(os.sched_getaffinity(0))
    finally:
        os.sched_setaffinity(0, before)
