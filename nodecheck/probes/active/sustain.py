"""Sustained load: the same work kept running on every device for seconds, timed per window.

A GEMM or a copy timed over a few milliseconds runs at the clocks the GPU starts with. Power
capping, thermal slowdown and a failing fan act over seconds: a GPU that is fast for 5 ms
and then throttles passes every short measurement. This keeps all devices busy at once (as a
training job does: the chassis' power and cooling see the whole node's load) for `seconds`,
in windows of about `window_s`, and returns each device's rate in every window. While the
last window runs it calls `under_load()` (the checks read NVML's clock-event reasons there).

Timing per window uses `device.Stopwatch`: CUDA events around the window's work on each GPU,
synchronised before they are read, so a window's figure is the GPU's own time for the work.
The number of steps per window comes from one timed step per device (calibration), so the
CPU never runs far ahead of the GPUs' queues. Measurement only: the check judges.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType

from nodecheck.probes.active.device import Device, Stopwatch, synchronize

Step = Callable[[], float]  # enqueue one unit of work on its device; returns its size (FLOP, B)
# Read while the devices are loaded: bus id -> the clock-event reasons NVML reports.
UnderLoad = Callable[[], Mapping[str, tuple[str, ...]]]


@dataclass(frozen=True)
class Sustained:
    """One device's rates (work per second) in successive windows of the sustained phase,
    and what NVML said limited its clocks while it was loaded."""

    device: Device
    windows: tuple[float, ...]
    seconds: float
    throttle: tuple[str, ...] = ()


def calibrate(torch: ModuleType, device: Device, step: Step, least_s: float = 0.01) -> float:
    """Seconds one step takes on its device: steps are repeated (after one warm-up) until
    they add up to `least_s`, as a single short step is mostly launch overhead."""
    step()
    synchronize(torch, device)
    count, took = 0, 0.0
    while took < least_s and count < 10_000:
        watch = Stopwatch(torch, device)
        watch.start()
        batch = max(1, count)
        for _ in range(batch):
            step()
        took += watch.stop()
        count += batch
    return took / max(count, 1)


def run(
    torch: ModuleType,
    steps: Mapping[Device, Step],
    seconds: float,
    window_s: float = 1.0,
    under_load: UnderLoad | None = None,
) -> list[Sustained]:
    """Keep every device of `steps` busy for about `seconds`; per-window rates. The steps
    per window follow each device's measured pace, so a window lasts about `window_s`."""
    per_step = {dev: calibrate(torch, dev, step) for dev, step in steps.items()}
    batch = {dev: max(1, int(window_s / max(t, 1e-6))) for dev, t in per_step.items()}
    rates: dict[Device, list[float]] = {dev: [] for dev in steps}
    reasons: Mapping[str, tuple[str, ...]] | None = None
    started = time.monotonic()
    while True:
        watches: dict[Device, Stopwatch] = {}
        done: dict[Device, float] = {}
        took: dict[Device, float] = {}
        # Enqueue each device's window before reading any clock: on GPUs the windows of all
        # devices run at the same time; on the CPU the same code runs them one after another.
        for dev, step in steps.items():
            watches[dev] = Stopwatch(torch, dev)
            watches[dev].start()
            done[dev] = sum(step() for _ in range(batch[dev]))
            watches[dev].mark()  # right behind this device's work, before waiting for any
        last = time.monotonic() - started + window_s >= seconds
        if last and reasons is None and under_load is not None:
            reasons = under_load()  # the GPUs still have this whole window queued
        for dev in steps:
            took[dev] = watches[dev].seconds()
            rates[dev].append(done[dev] / took[dev])
            batch[dev] = max(1, round(batch[dev] * window_s / took[dev]))
        if time.monotonic() - started >= seconds:
            break
    elapsed = time.monotonic() - started
    found = reasons or {}
    return [
        Sustained(dev, tuple(rates[dev]), elapsed, tuple(found.get(dev.pci_bus_id.upper(), ())))
        for dev in steps
    ]


def settled(windows: tuple[float, ...]) -> float:
    """The rate a device holds once it has warmed up: the median of the later half of the
    windows (the first ones run at the cold part's boost clocks)."""
    later = sorted(windows[len(windows) // 2 :]) or [0.0]
    return later[len(later) // 2]


def drop(windows: tuple[float, ...]) -> float:
    """How far the settled rate fell below the best early window (0.0: it held)."""
    if not windows:
        return 0.0
    early = max(windows[: max(1, len(windows) // 2)])
    return max(0.0, 1.0 - settled(windows) / early) if early > 0 else 0.0
