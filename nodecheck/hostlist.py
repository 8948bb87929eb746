"""Match node names against Slurm-style host patterns: `gpu[001-064,100]`, `dgx-*`."""

from __future__ import annotations

import fnmatch
import re

_BRACKET = re.compile(r"\[([0-9,\-]+)\]")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_plain_node_name(name: str) -> bool:
    """A name safe to hand to Slurm and to log: host-name characters only."""
    return _NODE_NAME.fullmatch(name) is not None  # `$` would pass a trailing newline


def _ranges(spec: str) -> list[tuple[int, int, int]]:
    """`001-064,100` -> [(1, 64, 3), (100, 100, 3)] (low, high, zero-padded width)."""
    out = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"bad range {part!r}")
        width = len(low) if low.startswith("0") and len(low) > 1 else 0
        out.append((int(low), int(high or low), width))
    return out


def host_matches(pattern: str, name: str) -> bool:
    if "[" not in pattern:
        return fnmatch.fnmatchcase(name, pattern)
    pieces = _BRACKET.split(pattern)
    regex, groups = "", []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            regex += fnmatch.translate(piece).removeprefix("(?s:").removesuffix(")\\Z")
        else:
            regex += "([0-9]+)"
            groups.append(_ranges(piece))
    found = re.fullmatch(regex, name)
    if not found:
        return False
    for digits, ranges in zip(found.groups(), groups, strict=True):
        value = int(digits)
        if not any(
            lo <= value <= hi and (width == 0 or len(digits) == width) for lo, hi, width in ranges
        ):
            return False
    return True


def validate_pattern(pattern: str) -> None:
    for spec in _BRACKET.findall(pattern):
        _ranges(spec)
    if pattern.count("[") != len(_BRACKET.findall(pattern)):
        raise ValueError(f"unbalanced or malformed brackets in {pattern!r}")
