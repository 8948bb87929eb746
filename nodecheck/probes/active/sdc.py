"""Silent data corruption: the same deterministic GEMM on every device, digested.

The inputs are made on the host from a fixed seed (so every device multiplies exactly the
same numbers) and the product is reduced to a SHA-256 of its bytes. A healthy node gives
one digest on every device of the same model and on every repeat: GEMM kernels for one
shape, dtype and GPU model are deterministic. A device whose digest differs from the
others, or changes between repeats, computes wrong results without reporting an error:
the failure ECC does not see. The check compares digests; this module only computes them.
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from nodecheck.probes.active.device import Device, measuring, synchronize

SEED = 20240615

# (torch, device, left, right) -> the product, on the host. The default is a plain matmul;
# tests inject a device that corrupts its result, at this boundary and nowhere else.
Compute = Callable[[ModuleType, Device, Any, Any], Any]


@dataclass(frozen=True)
class Digests:
    """One device's result digests, one per repeat (first 16 hex digits of SHA-256)."""

    device: Device
    digests: tuple[str, ...]


def matmul_on(torch: ModuleType, device: Device, left: Any, right: Any) -> Any:
    # float32 with TF32 off: full-precision math, so the digest is the arithmetic's, not a
    # rounding mode's; deterministic algorithms so that cuBLAS picks the same one each time.
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        product = torch.matmul(left.to(device.torch_name), right.to(device.torch_name))
        synchronize(torch, device)
        return product.cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32


def inputs(torch: ModuleType, size: int) -> tuple[Any, Any]:
    generator = torch.Generator().manual_seed(SEED)
    left = torch.randn(size, size, generator=generator, dtype=torch.float32)
    right = torch.randn(size, size, generator=generator, dtype=torch.float32)
    return left, right


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
) -> list[Digests]:
    left, right = inputs(torch, size)
    out = []
    for device in devices:
        with measuring(torch):
            out.append(
                Digests(
                    device,
                    tuple(
                        digest(compute(torch, device, left, right)) for _ in range(max(1, repeats))
                    ),
                )
            )
    return out
