"""Which failing components belong to the job: its GPUs and the HCAs/NICs local to them.

With `job_scoped = true`, a prolog/epilog failure on a GPU the job was not given (or on an
HCA that is not local to any of its GPUs) does not fail the job: the node is drained
right away, which Slurm turns into DRAINING, so this job runs and no new one lands.

Mapping: SLURM_JOB_GPUS are taken as NVML indices, and NVML index i is the i-th NVIDIA
display/3D controller in PCI bus order (NVML's default enumeration, CUDA_DEVICE_ORDER=
PCI_BUS_ID). Locality comes from sysfs: "pcie" = the HCA and a job GPU share a PCIe
bridge below the root complex (same switch, as NCCL pairs them); "numa" = same NUMA node.
Only read on the unhealthy path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

NVIDIA = "0x10de"
_GPU_CLASSES = ("0x0300", "0x0302")  # VGA / 3D controller
_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_GPU_COMPONENT = re.compile(r"^gpu(\d+)$")


@dataclass(frozen=True)
class PciDevice:
    bdf: str
    bridges: tuple[str, ...]  # PCI bridges from the root complex down, the device excluded
    numa: int


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def pci_device(sysfs_root: Path, device_link: Path) -> PciDevice | None:
    try:
        real = device_link.resolve(strict=True)
        rel = real.relative_to(sysfs_root.resolve() / "devices")
    except (OSError, ValueError):
        return None
    chain = [part for part in rel.parts if _BDF.match(part)]
    if not chain:
        return None
    numa = _read(real / "numa_node")
    return PciDevice(chain[-1], tuple(chain[:-1]), int(numa) if numa.lstrip("-").isdigit() else -1)


def nvidia_gpus(sysfs_root: Path) -> list[PciDevice]:
    """NVIDIA GPUs in PCI bus order: position i is NVML index i."""
    found = []
    bus = sysfs_root / "bus" / "pci" / "devices"
    for link in sorted(bus.iterdir()) if bus.is_dir() else ():
        if _read(link / "vendor") == NVIDIA and _read(link / "class").startswith(_GPU_CLASSES):
            dev = pci_device(sysfs_root, link)
            if dev is not None:
                found.append(dev)
    return found


def local(nic: PciDevice, gpu: PciDevice, mode: str) -> bool:
    if mode == "numa":
        return nic.numa < 0 or gpu.numa < 0 or nic.numa == gpu.numa
    return bool(set(nic.bridges) & set(gpu.bridges))


class Scoped(Protocol):
    """What `JobScope.contains` reads of a result: which check, which component. Structural,
    so a probe need not import the checks' result type (probes report, checks judge)."""

    @property
    def check_id(self) -> str: ...

    @property
    def component(self) -> str: ...


@dataclass(frozen=True)
class JobScope:
    gpus: frozenset[int]
    local_devices: frozenset[str]  # HCA and netdev names local to the job's GPUs

    @classmethod
    def from_sysfs(cls, sysfs_root: Path, job_gpus: Iterable[int], mode: str) -> JobScope:
        wanted = frozenset(job_gpus)
        all_gpus = nvidia_gpus(sysfs_root)
        job = [g for i, g in enumerate(all_gpus) if i in wanted]
        names = set()
        for cls_dir in ("infiniband", "net"):
            base = sysfs_root / "class" / cls_dir
            for entry in sorted(base.iterdir()) if base.is_dir() else ():
                dev = pci_device(sysfs_root, entry / "device")
                if dev is not None and any(local(dev, g, mode) for g in job):
                    names.add(entry.name)
        return cls(wanted, frozenset(names))

    def contains(self, result: Scoped) -> bool:
        """Does this result's component matter to the job? Node-wide ones always do."""
        component = result.component
        gpu = _GPU_COMPONENT.match(component)
        if gpu:
            return int(gpu[1]) in self.gpus
        device = component.split("/", 1)[0]
        if result.check_id.split(".", 1)[0] in ("ib", "net") and device:
            return device in self.local_devices
        return True
