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

    @property
    def nvml_index(self) -> int:
        """The index NVML and `nvidia-smi topo -m` give this GPU (torch's when unknown)."""
        return self.number if self.number >= 0 else self.index

    @property
    def sysfs_bdf(self) -> str:
        """The bus id as sysfs names the device ("0000:18:00.0"); "" when there is none.
        NVML writes an 8-digit domain in capitals, /sys/bus/pci/devices a 4-digit one."""
        if not self.pci_bus_id or ":" not in self.pci_bus_id:
            return ""
        domain, rest = self.pci_bus_id.split(":", 1)
        try:
            return f"{int(domain, 16):04x}:{rest.lower()}"
        except ValueError:
            return ""


def load_torch() -> ModuleType:
    """torch, imported now; ActiveUnavailable with the fix when the extra is missing."""
    # NVML numbers GPUs by PCI bus id; make CUDA do the same, so gpu3 is the same GPU for
    # the deep checks as for gpu.* (CUDA's default order is "fastest first").
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    # cuBLAS picks a workspace per stream and may split a GEMM differently run to run unless
    # this is fixed before its first handle is made; deep.sdc's deterministic mode (and
    # torch.use_deterministic_algorithms on CUDA >= 10.2) needs it set this early.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
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


class Stopwatch:
    """Times work that may run asynchronously on its devices, completion included.

    On one CUDA device: CUDA events recorded on that device's current stream around the
    work, then `synchronize` on the end event, so the figure is the device's own time from
    the first kernel to the last one's end (a CPU clock would stop when the launches
    returned, long before the copy or the NCCL transfer finished). Anywhere else (the CPU,
    or several devices with work on side streams): the wall clock, stopped only after every
    device involved has been synchronised. Either way the synchronisation is inside the
    timed region."""

    def __init__(self, torch: ModuleType, devices: Device | tuple[Device, ...]) -> None:
        self._torch = torch
        self._devices = devices if isinstance(devices, tuple) else (devices,)
        only = self._devices[0] if len(self._devices) == 1 else None
        self._events = only is not None and only.kind == "cuda"
        self._start: Any = None
        self._end: Any = None
        self._started = 0.0
        self._stopped = 0.0

    def start(self) -> None:
        if self._events:
            index = self._devices[0].index
            self._start = self._torch.cuda.Event(enable_timing=True)
            self._start.record(self._torch.cuda.current_stream(index))
        else:
            self._started = time.perf_counter()

    def mark(self) -> None:
        """The end of the timed work: an event recorded right behind it on the GPU (read
        later, so that several devices' work can be enqueued and then waited for without
        one device's idle time counting), or, elsewhere, every device synchronised and the
        clock read."""
        if self._events:
            index = self._devices[0].index
            self._end = self._torch.cuda.Event(enable_timing=True)
            self._end.record(self._torch.cuda.current_stream(index))
            return
        for device in self._devices:
            synchronize(self._torch, device)
        self._stopped = time.perf_counter()

    def seconds(self) -> float:
        """The time between start() and mark(), once the work has completed."""
        if self._events:
            self._end.synchronize()
            return max(self._start.elapsed_time(self._end) / 1000.0, 1e-9)
        return max(self._stopped - self._started, 1e-9)

    def stop(self) -> float:
        """Seconds since start(), once everything enqueued since has completed."""
        self.mark()
        return self.seconds()


def time_per_call(
    torch: ModuleType, devices: Device | tuple[Device, ...], work: Callable[[], Any], repeats: int
) -> float:
    """Median seconds of one `work()` call, after one warm-up; each repeat is timed by a
    Stopwatch, so asynchronous CUDA work is counted to its completion."""
    involved = devices if isinstance(devices, tuple) else (devices,)
    work()  # warm-up: kernels chosen, memory allocated, caches primed
    for device in involved:
        synchronize(torch, device)
    samples = []
    for _ in range(max(1, repeats)):
        watch = Stopwatch(torch, involved)
        watch.start()
        work()
        samples.append(watch.stop())
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
