"""Silent data corruption: the same deterministic GEMM on every device, digested.

The inputs are made on the host from a fixed seed (so every device multiplies exactly the
same numbers) and each product is reduced to a SHA-256 of its bytes. A healthy node gives
one digest per precision on every device of the same model and on every repeat: with
deterministic algorithms, cuBLAS runs the same kernel with the same split of the work for
one shape, dtype and GPU model. A device whose digest differs from the others, or changes
between repeats, computes wrong results without reporting an error: the failure ECC does
not see. The check compares digests; this module only computes them.

Each precision exercises its own hardware path, as training uses them: "fp32" (FP32 FMA
units, TF32 off), "tf32" (tensor cores, float32 inputs rounded to TF32), "bf16" and "fp16"
(tensor cores). A fault in a tensor-core datapath is invisible to an FP32-only test.
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from nodecheck.probes.active.device import Device, measuring, synchronize

SEED = 20240615
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

# (torch, device, left, right, precision) -> the product, on the host. The default is a
# plain matmul; tests inject a device that corrupts its result, at this boundary only.
Compute = Callable[[ModuleType, Device, Any, Any, str], Any]


@dataclass(frozen=True)
class Digests:
    """One device's result digests in one precision, one per repeat (16 hex digits)."""

    device: Device
    digests: tuple[str, ...]
    precision: str = "fp32"


def _dtype(torch: ModuleType, precision: str) -> Any:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    return {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
            "fp16": torch.float16}[precision]  # fmt: skip


@contextmanager
def deterministic(torch: ModuleType, precision: str) -> Iterator[None]:
    """Deterministic algorithms on (torch then refuses nondeterministic kernels, and cuBLAS
    runs with the fixed workspace device.load_torch configured), TF32 math only for "tf32";
    the previous settings are restored afterwards."""
    was = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


def matmul_on(
    torch: ModuleType, device: Device, left: Any, right: Any, precision: str = "fp32"
) -> Any:
    """The product on `device`, back on the host (inputs already in the precision's dtype)."""
    product = torch.matmul(left.to(device.torch_name), right.to(device.torch_name))
    synchronize(torch, device)
    return product.cpu()


def inputs(torch: ModuleType, size: int, precision: str = "fp32") -> tuple[Any, Any]:
    generator = torch.Generator().manual_seed(SEED)
    left = torch.randn(size, size, generator=generator, dtype=torch.float32)
    right = torch.randn(size, size, generator=generator, dtype=torch.float32)
    dtype = _dtype(torch, precision)
    return left.to(dtype), right.to(dtype)


def digest(tensor: Any) -> str:
    """SHA-256 of a host tensor's bytes, read in place (no numpy needed)."""
    flat = tensor.contiguous()
    raw = ctypes.string_at(flat.data_ptr(), flat.numel() * flat.element_size())
    return hashlib.sha256(raw).hexdigest()[:16]


def measure(
    torch: ModuleType,
    devices: list[Device],
    size: int,
    repeats: int,
    compute: Compute = matmul_on,
    precisions: tuple[str, ...] | list[str] = ("fp32",),
) -> list[Digests]:
    out = []
    for precision in precisions:
        left, right = inputs(torch, size, precision)
        for device in devices:
            with measuring(torch), deterministic(torch, precision):
                found = tuple(
                    digest(compute(torch, device, left, right, precision))
                    for _ in range(max(1, repeats))
                )
            out.append(Digests(device, found, precision))
    return out
