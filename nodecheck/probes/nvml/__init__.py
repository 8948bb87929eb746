"""The NVML adapter: the gpu.* checks see NVML only through this package.

`get_snapshot(source, indices)` returns one plain-data Snapshot of the node's GPUs, from
the real NVML (`source="real"`) or from a recorded JSON file (`"replay:/path.json"`).
Snapshots are cached per process, keyed on the source and the GPU selection, so that the
gpu.* checks, which run one after another in one isolated child, share one NVML session.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodecheck.probes.nvml.model import Snapshot

REPLAY_PREFIX = "replay:"


def replay_path(source: str) -> Path | None:
    return Path(source[len(REPLAY_PREFIX) :]) if source.startswith(REPLAY_PREFIX) else None


def get_snapshot(source: str, indices: Iterable[int] | None = None) -> Snapshot:
    """The node's GPUs as `source` reports them; `indices` restricts to those NVML indices."""
    wanted = tuple(sorted(set(indices))) if indices is not None else None
    path = replay_path(source)
    stamp = None
    if path is not None:
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
    return _cached(source, wanted, stamp)


@functools.lru_cache(maxsize=16)
def _cached(source: str, wanted: tuple[int, ...] | None, stamp: object) -> Snapshot:
    path = replay_path(source)
    if path is not None:
        from nodecheck.probes.nvml import replay

        return replay.load(path, wanted)
    if source != "real":
        raise ValueError(f"nvml source must be 'real' or 'replay:/path', not {source!r}")
    from nodecheck.probes.nvml import real

    return real.collect(wanted, source=source)


def clear_cache() -> None:
    _cached.cache_clear()


def collect_fresh(source: str, indices: Iterable[int] | None = None) -> Snapshot:
    """A new snapshot, bypassing the cache (e.g. to see whether processes have gone)."""
    path = replay_path(source)
    wanted = tuple(sorted(set(indices))) if indices is not None else None
    if path is not None:
        from nodecheck.probes.nvml import replay

        return replay.load(path, wanted)
    from nodecheck.probes.nvml import real

    return real.collect(wanted, source=source)


__all__ = ["REPLAY_PREFIX", "clear_cache", "collect_fresh", "get_snapshot", "replay_path"]
