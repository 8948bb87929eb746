"""Slurm's own view of the NVLink domains: the blocks of topology/block, read from the files
beside slurm.conf (no controller call: the node reads them like slurmd does).

Two formats, both documented in Slurm's man pages:
- topology.conf(5), topology/block: one `BlockName=<name> Nodes=<hostlist>` line per block
  (a GB200 NVL72 rack is one block of 18 nodes);
- topology.yaml(5) (Slurm 25.05 on, preferred over topology.conf when both exist): a list of
  named topologies, a block one holding `blocks:` items `- block: <name>` / `nodes: <hostlist>`.
Only the block parts are read; tree switches and flat topologies carry no NVLink domain.
No YAML library is needed (none is a dependency): the block lists are plain `key: value`
lines, which is all this reader takes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from nodecheck.hostlist import expand

_CONF_BLOCK = re.compile(r"^\s*BlockName=(?P<name>\S+)\s+Nodes=(?P<nodes>\S+)", re.IGNORECASE)
_YAML_KEY = re.compile(r"^(?P<indent>\s*)(?P<dash>-\s+)?(?P<key>[A-Za-z_]+):\s*(?P<value>.*)$")


def read_blocks(path: Path) -> dict[str, tuple[str, ...]]:
    """Block name -> its nodes, from topology.conf or topology.yaml (by the file's name)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [line.split("#", 1)[0].rstrip() for line in text.splitlines()]
    if path.suffix in (".yaml", ".yml"):
        return _yaml_blocks(lines)
    return _conf_blocks(lines)


def block_of(blocks: dict[str, tuple[str, ...]], node: str) -> str | None:
    """The first block listing `node`, or None."""
    return next((name for name, nodes in blocks.items() if node in nodes), None)


def node_blocks(blocks: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Node -> its block (the first that lists it)."""
    out: dict[str, str] = {}
    for name, nodes in blocks.items():
        for node in nodes:
            out.setdefault(node, name)
    return out


def _conf_blocks(lines: Iterable[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for line in lines:
        match = _CONF_BLOCK.match(line)
        if match and match["name"] not in out:
            out[match["name"]] = tuple(expand(match["nodes"]))
    return out


def _yaml_blocks(lines: Iterable[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    in_blocks = False
    current: str | None = None
    for line in lines:
        match = _YAML_KEY.match(line)
        if not match:
            continue
        key, value = match["key"], match["value"].strip().strip("'\"")
        if key == "topology":  # a new topology: its blocks (if any) follow
            in_blocks, current = False, None
        elif key == "blocks":
            in_blocks = True
        elif in_blocks and key == "block":
            current = value
        elif in_blocks and key == "nodes" and current and current not in out:
            out[current] = tuple(expand(value))
    return out
