"""Device-memory bandwidth (GB/s): a device-to-device copy of a large buffer.

A copy reads and writes every byte, so it moves 2 * bytes per call; that is the figure
datasheets' HBM bandwidth compares with (STREAM's "copy" counts the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from nodecheck.probes.active import sustain
from nodecheck.probes.active.device import GB, Device, measuring, time_per_call


@dataclass(frozen=True)
class MemFigure:
    """One device's copy bandwidth over a buffer of `nbytes`."""

    gbps: float
    nbytes: int
    seconds: float


def measure(torch: ModuleType, device: Device, nbytes: int, repeats: int) -> MemFigure:
    with measuring(torch):
        count = max(1, nbytes // 4)
        src = torch.ones(count, dtype=torch.float32, device=device.torch_name)
        dst = torch.empty_like(src)
        seconds = time_per_call(torch, device, lambda: dst.copy_(src), repeats)
        moved = 2 * count * 4
        return MemFigure(moved / seconds / GB, count * 4, seconds)


def sustained(
    torch: ModuleType,
    devices: tuple[Device, ...],
    nbytes: int,
    seconds: float,
    under_load: sustain.UnderLoad | None = None,
) -> list[sustain.Sustained]:
    """The same copy on every device at once for `seconds`; GB/s per window."""
    with measuring(torch):
        count = max(1, nbytes // 4)
        steps: dict[Device, sustain.Step] = {}
        for device in devices:
            src = torch.ones(count, dtype=torch.float32, device=device.torch_name)
            dst = torch.empty_like(src)

            def step(src=src, dst=dst) -> float:  # bound per device
                dst.copy_(src)
                return 2 * count * 4 / GB

            steps[device] = step
        window = min(1.0, max(seconds / 4, 0.05))
        return sustain.run(torch, steps, seconds, window, under_load)
