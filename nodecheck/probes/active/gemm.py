"""Dense GEMM throughput per device and precision (TFLOP/s).

A square matmul of `size` does 2*size^3 floating-point operations. bf16 and fp16 run on the
tensor cores of a GPU; "tf32" is a float32 matmul with TF32 tensor-core math allowed, which
is what datasheets quote. On the CPU the same calls run (tf32 is then plain float32).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

from nodecheck.probes.active import sustain
from nodecheck.probes.active.device import TERA, Device, measuring, time_per_call

PRECISIONS = ("bf16", "fp16", "tf32")


@dataclass(frozen=True)
class GemmFigure:
    """One device's GEMM throughput in one precision; `error` when it could not run."""

    precision: str
    tflops: float | None
    size: int
    seconds: float = 0.0
    error: str = ""


def _dtype(torch: ModuleType, precision: str) -> object:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32}[precision]


@contextmanager
def math_mode(torch: ModuleType, precision: str) -> Iterator[None]:
    """TF32 tensor-core math on for "tf32" (what datasheets quote for float32 GEMM), off
    otherwise; restored afterwards."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32


def measure(
    torch: ModuleType, device: Device, precision: str, size: int, repeats: int
) -> GemmFigure:
    with math_mode(torch, precision), measuring(torch):
        dtype = _dtype(torch, precision)
        try:
            left = torch.randn(size, size, device=device.torch_name).to(dtype)
            right = torch.randn(size, size, device=device.torch_name).to(dtype)
            out = torch.empty(size, size, device=device.torch_name, dtype=dtype)
            seconds = time_per_call(
                torch, device, lambda: torch.matmul(left, right, out=out), repeats
            )
        except RuntimeError as exc:  # a dtype this device (or build) cannot multiply
            return GemmFigure(precision, None, size, error=str(exc).splitlines()[0][:200])
        return GemmFigure(precision, 2 * size**3 / seconds / TERA, size, seconds)


def sustained(
    torch: ModuleType,
    devices: tuple[Device, ...],
    precision: str,
    size: int,
    seconds: float,
    under_load: sustain.UnderLoad | None = None,
) -> list[sustain.Sustained]:
    """The same GEMM on every device at once for `seconds`; TFLOP/s per window."""
    with math_mode(torch, precision), measuring(torch):
        dtype = _dtype(torch, precision)
        steps: dict[Device, sustain.Step] = {}
        for device in devices:
            left = torch.randn(size, size, device=device.torch_name).to(dtype)
            right = torch.randn(size, size, device=device.torch_name).to(dtype)
            out = torch.empty(size, size, device=device.torch_name, dtype=dtype)

            def step(left=left, right=right, out=out) -> float:  # bound per device
                torch.matmul(left, right, out=out)
                return 2 * size**3 / TERA

            steps[device] = step
        window = min(1.0, max(seconds / 4, 0.05))
        return sustain.run(torch, steps, seconds, window, under_load)
