"""Breadcrumbs from inside an isolated probe, so a hang can be reported precisely.

A check calls `note("nvmlDeviceGetRemappedRows gpu3")` before a call that might hang;
if the probe is killed at its deadline, the runner reports the last note it received.
Outside the runner's child processes this is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable

_sink: Callable[[str], None] | None = None


def set_sink(sink: Callable[[str], None] | None) -> None:
    global _sink
    _sink = sink


def note(text: str) -> None:
    if _sink is not None:
        _sink(text)
