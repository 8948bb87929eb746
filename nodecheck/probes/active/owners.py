"""Which GPU compute processes are this run's own.

The deep checks run one after another in one probe process, and torch keeps a CUDA context
on every GPU it touched until that process exits: after the first GPU check, NVML lists the
probe process itself on every GPU. deep.fabric's worker (a child of the probe process) does
the same while it runs. Those are not "someone's job", so they must not make a GPU look busy.

This reads, from procfs: the probe process, every process below it, and for each of them the
other numbers its PID namespaces give it (`NSpid` in /proc/<pid>/status), since NVML may
report a process by the PID of an outer namespace. It only reads; the check decides.
"""

from __future__ import annotations

import os
from pathlib import Path


def _parent_of(procfs: Path, pid: str) -> int | None:
    try:
        stat = (procfs / pid / "stat").read_text(errors="replace")
    except OSError:
        return None  # gone since the listing, or not ours to read
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the
    # last ")".
    fields = stat[stat.rfind(")") + 1 :].split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


def _namespace_pids(procfs: Path, pid: int) -> set[int]:
    try:
        for line in (procfs / str(pid) / "status").read_text(errors="replace").splitlines():
            if line.startswith("NSpid:"):
                return {int(v) for v in line.split()[1:] if v.isdigit()}
    except OSError:
        pass
    return set()


def own_pids(procfs_root: Path = Path("/proc"), root_pid: int | None = None) -> frozenset[int]:
    """`root_pid` (this process) and its descendants, with every PID-namespace alias."""
    root = root_pid or os.getpid()
    children: dict[int, list[int]] = {}
    try:
        listing = [name for name in os.listdir(procfs_root) if name.isdigit()]
    except OSError:
        listing = []
    for name in listing:
        parent = _parent_of(procfs_root, name)
        if parent is not None:
            children.setdefault(parent, []).append(int(name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in tree:
            continue
        tree.add(pid)
        todo.extend(children.get(pid, ()))
    aliases = set(tree)
    for pid in tree:
        aliases |= _namespace_pids(procfs_root, pid)
    return frozenset(aliases)
