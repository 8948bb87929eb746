"""State a run owed but could not write: kept aside until the state directory takes it.

A drain is resumed by nodecheck only when its exact reason is in the node's state (the
drain marker). A run that drained while the state directory was read-only or full lost
that marker, so the node was never resumed, even once space was freed, and nothing said
so. Now the run writes what it owed (the same writes its transaction would have made:
run/record.py) to one small JSON file per node in `state_fallback_dir` (default
/run/nodecheck/unsaved: a tmpfs, root-only, apart from /var where the state and the logs
fill up together). While that file exists:

- the plan reads it over the history window (run/gather.py): the drain's exact reason is
  the marker, so health can resume that drain, and only that one;
- every run says so (`state_not_saved`, with what an admin must do), the metrics file says
  `nodecheck_state_unsaved{node} 1`, and `nodecheck report` lists the node;
- the first run whose record succeeds applies it first, in its own transaction (once: the
  file's id is kept in the state), and removes the file.

The file decides resumes, so it is trusted only as the state is: a directory and a file of
root's own that no one else can write, never read through a symlink. If it cannot be
written either, or the node reboots (a tmpfs), the log line says that nodecheck will not
resume the node by itself.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nodecheck.core.clock import Stamp, elapsed_s
from nodecheck.core.plan import HeldBack, HistoryWindow, Marker, PendingFailure

DEFAULT_DIR = "/run/nodecheck/unsaved"
_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Unsaved:
    """What runs on `node` could not write to its state, oldest first."""

    id: str  # a new one each time the file is rewritten: applied once, by id
    node: str
    since: float  # the node's wall time of the first write that failed, for people
    state_dir: str
    error: str  # why the latest write failed
    writes: tuple[dict[str, Any], ...]  # run/record.Write.as_json, in order

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "node": self.node,
            "since": self.since,
            "state_dir": self.state_dir,
            "error": self.error,
            "writes": list(self.writes),
        }

    @classmethod
    def from_json(cls, data: Any) -> Unsaved | None:
        if not isinstance(data, dict) or not isinstance(data.get("writes"), list):
            return None
        try:
            return cls(
                str(data["id"]),
                str(data["node"]),
                float(data["since"]),
                str(data.get("state_dir", "")),
                str(data.get("error", "")),
                tuple(w for w in data["writes"] if isinstance(w, dict)),
            )
        except (KeyError, TypeError, ValueError):
            return None


def path_for(directory: Path, node: str) -> Path:
    return directory / f"{node}.json"


def _own_dir(directory: Path) -> str | None:
    """Why `directory` is not root's private directory (None: it is)."""
    st = directory.lstat()
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory (a symlink?)"
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {st.st_mode & 0o777:o})"
    return None


def load(directory: Path, node: str, state_dir: Path | None = None) -> Unsaved | None:
    """The node's unsaved writes; None when there are none, or (with `state_dir`) when they
    are owed to another state directory (another config or cluster on this host uses the
    same node name: its writes are not this state's). OSError when a file is there but is
    not to be trusted (someone else's, a symlink) or cannot be read."""
    from nodecheck.log import foreign_file

    path = path_for(directory, node)
    try:
        problem = _own_dir(directory)
    except FileNotFoundError:
        return None
    if problem:
        raise OSError(errno.EPERM, f"{directory}: {problem}: refused")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, f"{path} is a symbolic link: refused") from exc
        raise
    with os.fdopen(fd, "rb") as fh:
        problem = foreign_file(os.fstat(fd))
        if problem:
            raise OSError(errno.EPERM, f"{path}: {problem}: refused")
        data = fh.read(_MAX_BYTES)
    try:
        doc = Unsaved.from_json(json.loads(data))
    except ValueError as exc:
        raise OSError(errno.EINVAL, f"{path}: not what nodecheck writes: {exc}") from exc
    if doc is None or doc.node != node:
        raise OSError(errno.EINVAL, f"{path}: not what nodecheck writes")
    if state_dir is not None and doc.state_dir != str(state_dir):
        return None
    return doc


def keep(
    directory: Path,
    node: str,
    state_dir: Path,
    writes: tuple[dict[str, Any], ...],
    error: str,
    now: float,
    earlier: Unsaved | None,
) -> Path:
    """Add `writes` to what the node already has unsaved (`earlier`), atomically: a new
    file (mkstemp: O_EXCL|O_NOFOLLOW, 0600) renamed over the old one in a 0700 directory of
    root's own. OSError when that cannot be done either."""
    old_umask = os.umask(0o077)  # /run/nodecheck too, if this makes it: root-only
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    finally:
        os.umask(old_umask)
    problem = _own_dir(directory)
    if problem:
        raise OSError(errno.EPERM, f"{directory}: {problem}: refused")
    doc = Unsaved(
        uuid.uuid4().hex,
        node,
        earlier.since if earlier is not None else now,
        str(state_dir),
        error,
        (earlier.writes if earlier is not None else ()) + writes,
    )
    path = path_for(directory, node)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc.as_json(), fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())  # it stands for a drain nodecheck must be able to resume
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def remove(directory: Path, node: str, doc_id: str) -> None:
    """Remove the node's file once its writes are in the state, unless a concurrent run
    rewrote it meanwhile (a new id: its new writes are still owed)."""
    path = path_for(directory, node)
    try:
        current = load(directory, node)
    except OSError:
        return
    if current is not None and current.id == doc_id:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def over_window(
    window: HistoryWindow, doc: Unsaved, now: Stamp, flap_window_s: float
) -> HistoryWindow:
    """The history window as it would read had the state taken `doc`'s writes: the drain
    marker (its exact reason), a pending failure and a breaker hold as the latest write
    set them, and its drains counted for flap control. Pure."""
    from nodecheck.store import history

    marker, pending, held = window.marker, window.pending, window.held_back
    drains = window.drains_in_window
    for write in doc.writes:
        key, value = write.get("key"), write.get("value")
        if key == history.DRAIN_MARKER:
            marker = Marker.from_json(value)
        elif key == history.PENDING_FAILURE:
            pending = PendingFailure.from_json(value)
        elif key == history.BREAKER_HOLD:
            held = HeldBack.from_json(value)
        elif write.get("event") == "drain":
            at = Stamp.from_json(float(write.get("at", 0) or 0), write)
            drains += 1 if elapsed_s(at, now) <= flap_window_s else 0
    return replace(window, marker=marker, pending=pending, held_back=held, drains_in_window=drains)


def report_rows(
    directory: Path, nodes: list[str], state_dir_for: Callable[[str], Path] | None = None
) -> list[dict[str, Any]]:
    """`nodecheck report`: the nodes this host keeps unsaved state for, with what it holds
    (the drain it made, above all) and what an admin must do; with `state_dir_for`, only
    what is owed to the state directories of this config (as the runs apply it)."""
    rows = []
    for node in sorted(nodes):
        try:
            doc = load(directory, node, state_dir_for(node) if state_dir_for else None)
        except OSError as exc:
            rows.append({"node": node, "problem": exc.strerror or str(exc)})
            continue
        if doc is None:
            continue
        marker = next(
            (w.get("value") for w in reversed(doc.writes) if w.get("key") == "drain"), None
        )
        rows.append(
            {
                "node": node,
                "since": doc.since,
                "state_dir": doc.state_dir,
                "error": doc.error,
                "drain_reason": marker.get("reason") if isinstance(marker, dict) else None,
                "kept_in": str(path_for(directory, node)),
                "what_now": f"make {doc.state_dir} writable (free space, remount read-write); "
                "the next run records what is kept and resumes nodecheck's drain as usual",
            }
        )
    return rows
