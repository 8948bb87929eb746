"""Replay a recorded Snapshot from a JSON file instead of asking NVML.

Besides the snapshot itself a replay file may carry a `replay` table that makes the
replay misbehave the way a dying GPU does:

    "replay": {"hang": {"call": "nvmlDeviceGetRemappedRows", "gpu": 3}}

sleeps forever (after the same progress note the real source writes) when that call would
be made for that GPU, so the runner's deadline path can be tested without hardware. A hang
on `nvmlInit` (no "gpu") hangs before anything is read. A hang on a GPU that the selection
leaves out (only the job's GPUs) does not happen, as with the real source.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from nodecheck.core.progress import note
from nodecheck.probes.nvml.model import Snapshot


def load(path: Path, indices: Iterable[int] | None = None) -> Snapshot:
    data = json.loads(path.read_text(encoding="utf-8"))
    hang = (data.get("replay") or {}).get("hang")
    wanted = sorted(set(indices)) if indices is not None else None
    if hang:
        _maybe_hang(hang, wanted)
    snap = Snapshot.from_dict(data)
    snap = replace(snap, source=f"replay:{path}")
    if wanted is None or snap.init_error is not None:
        return snap
    return replace(
        snap, gpus=tuple(g for g in snap.gpus if g.index in wanted), selected=tuple(wanted)
    )


def _maybe_hang(hang: Mapping[str, Any], wanted: list[int] | None) -> None:
    call = str(hang.get("call", "nvmlInit"))
    gpu = hang.get("gpu")
    if gpu is not None and wanted is not None and int(gpu) not in wanted:
        return
    note(f"{call} gpu{gpu}" if gpu is not None else call)
    while True:  # as stuck as a GPU that fell off the bus; only SIGKILL ends this
        time.sleep(3600)
