"""Slurm host lists through python-hostlist: expand `gpu[001-064,100]`, compress names back,
and match a node name against a node class pattern.

python-hostlist expands exactly as Slurm does for the forms Slurm accepts (the lower bound's
zero padding sets the width: `node[1-128]` has no `node001`, `node[001-128]` has it), which
tests/unit/test_hostlist.py checks against Slurm's own `scontrol show hostnames`. It also
accepts a suffix after a range (`gpu[01-02]-ib`), which Slurm 22.05 refuses; fabric host
names use it. It was picked over ClusterShell's NodeSet because it is one small module
(docs/performance.md has the import figures).

Node class patterns may also hold shell globs outside the brackets (`dgx-*`): the range is
expanded first, then each name is matched as a glob.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable
from types import ModuleType

# A job or a node class never needs more; a typo like `n[1-9999999]` is refused, not expanded.
MAX_NAMES = 65536
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_GLOB = re.compile(r"[*?]")


def is_plain_node_name(name: str) -> bool:
    """A name safe to hand to Slurm and to log: host-name characters only."""
    return _NODE_NAME.fullmatch(name) is not None  # `$` would pass a trailing newline


def expand(text: str) -> list[str]:
    """`n[1-3,7],login1` -> every name, in order, each once; ValueError if malformed."""
    python_hostlist = _library()
    try:
        names = python_hostlist.expand_hostlist(text)
    except python_hostlist.BadHostlist as exc:
        raise ValueError(f"bad host list {text!r}: {exc}") from None
    if len(names) > MAX_NAMES:
        raise ValueError(f"host list {text!r} expands to more than {MAX_NAMES} names")
    return names


def collect(names: Iterable[str]) -> str:
    """The short form of `names` (`n1 n2 n3 n5` -> `n[1-3,5]`), for reports."""
    return _library().collect_hostlist(list(names))


def _library() -> ModuleType:
    """python-hostlist, loaded where a list is expanded: the Slurm backends import this
    module only to check node names, and the contract suite runs them in Debian roots
    that have Slurm and pytest but not python-hostlist."""
    import hostlist

    return hostlist


@functools.lru_cache(maxsize=256)
def _expanded(pattern: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """A pattern's names: the plain ones, and those with glob characters."""
    names = expand(pattern)
    return (
        frozenset(n for n in names if not _GLOB.search(n)),
        tuple(n for n in names if _GLOB.search(n)),
    )


def host_matches(pattern: str, name: str) -> bool:
    plain, globs = _expanded(pattern)
    return name in plain or any(fnmatch.fnmatchcase(name, glob) for glob in globs)


def validate_pattern(pattern: str) -> None:
    """ValueError naming the problem when `pattern` is not a host list."""
    _expanded(pattern)
