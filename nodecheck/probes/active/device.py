"""The devices the deep tier measures, through PyTorch: CUDA GPUs, or the CPU where none.

PyTorch is an optional extra (`nodecheck[active]`) and heavy to import (a second or more),
so it is imported here, on first use, inside the probe child that runs the deep checks;
never by the prolog's parent. The same measurement code runs on both kinds of device:
on a GPU host with CUDA, here (and in CI) on the CPU build of torch, where the "device" is
the CPU itself.

Every measurement leaves the device as it found it: tensors are dropped and, on CUDA, the
caching allocator's memory is handed back (`release`). Nothing outlives the probe child.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

GB = 1e9  # datasheets quote decimal GB/s and TFLOP/s; so do we
TERA = 1e12


class ActiveUnavailable(Exception):
    """The deep tier cannot measure here (no torch, or an unknown device kind)."""


@dataclass(frozen=True)
class Device:
    """One device to measure: a CUDA GPU (index as torch counts it) or the CPU."""

    kind: str  # "cuda" or "cpu"
    index: int  # torch's CUDA index; 0 for the CPU
    name: str  # the model as the driver names it, e.g. "NVIDIA H100 80GB HBM3"
    pci_bus_id: str = ""  # "00000000:18:00.0" as NVML writes it; "" for the CPU
    number: int = -1  # the GPU's NVML index once known (CUDA_VISIBLE_DEVICES renumbers)

    @property
    def component(self) -> str:
        if self.kind != "cuda":
            return "cpu" if self.index == 0 else f"cpu{self.index}"
        return f"gpu{self.number if self.number >= 0 else self.index}"

    @property
    def torch_name(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else "cpu"


def load_torch() -> ModuleType:
    """torch, imported now; ActiveUnavailable with the fix when the extra is missing."""
    # NVML numbers GPUs by PCI bus id; make CUDA do the same, so gpu3 is the same GPU for
    # the deep checks as for gpu.* (CUDA's default order is "fastest first").
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    # The CPU wheel warns about a missing numpy (on import and on the first tensor it
    # builds); nodecheck does not use numpy, and the warning would land in slurmd's log.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch
    except ImportError as exc:
        raise ActiveUnavailable(
            f"PyTorch is not installed ({exc}): install nodecheck[active]"
        ) from None
    return torch


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo ('cpu' when it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def find_devices(torch: ModuleType, want: str = "auto") -> list[Device]:
    """The CUDA GPUs torch sees, or the CPU: `want` is "auto", "cuda" or "cpu"."""
    if want not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', not {want!r}")
    if want != "cpu" and torch.cuda.is_available():
        found = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            bus = (
                f"{getattr(props, 'pci_domain_id', 0):08X}:"
                f"{getattr(props, 'pci_bus_id', 0):02X}:"
                f"{getattr(props, 'pci_device_id', 0):02X}.0"
            )
            found.append(Device("cuda", index, props.name, bus))
        return found
    if want == "cuda":
        raise ActiveUnavailable("no CUDA device visible to torch (device = 'cuda' configured)")
    return [Device("cpu", 0, cpu_name())]


def synchronize(torch: ModuleType, device: Device) -> None:
    if device.kind == "cuda":
        torch.cuda.synchronize(device.index)


def time_per_call(
    torch: ModuleType, devices: Device | tuple[Device, ...], work: Callable[[], Any], repeats: int
) -> float:
    """Median wall seconds of one `work()` call, after one warm-up; synchronised on each
    device involved so that asynchronous CUDA work is counted in full."""
    involved = devices if isinstance(devices, tuple) else (devices,)

    def sync() -> None:
        for device in involved:
            synchronize(torch, device)

    work()  # warm-up: kernels chosen, memory allocated, caches primed
    sync()
    samples = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        work()
        sync()
        samples.append(time.perf_counter() - started)
    return max(statistics.median(samples), 1e-9)


def release(torch: ModuleType) -> None:
    """Hand back what the measurements allocated (the CUDA cache too), so the device is
    left as found."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


@contextmanager
def measuring(torch: ModuleType) -> Iterator[None]:
    """Release device memory however the measurement ends."""
    try:
        yield
    finally:
        release(torch)
