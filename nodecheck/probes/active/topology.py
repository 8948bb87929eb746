"""How each GPU pair is connected, as `nvidia-smi topo -m` prints it.

The matrix names, for every pair of GPUs (NVML numbering, whatever CUDA_VISIBLE_DEVICES
says), the path between them:

- `NV<n>`: a bonded set of n NVLinks. On NVSwitch systems (HGX/DGX) every pair shows the
  GPU's whole set (NV18 on H100/H200/B200 SXM, NV12 on A100 SXM), because each GPU reaches
  every other through the switches with all its links; on bridged PCIe cards only the
  bridged pairs show NV<n> (H100 NVL / A100 PCIe pairs: NV12; a 4-way H200 NVL bridge
  splits 18 links over 3 peers);
- `PIX` / `PXB`: PCIe through one or more PCIe switches, without the CPU;
- `PHB` / `NODE` / `SYS`: PCIe through a host bridge, across host bridges of one NUMA node,
  or across sockets (QPI/UPI/xGMI);
- `X`: the GPU itself.

Lines may start with an ANSI underline (newer drivers colour the header). Rows and columns
beyond the GPUs (NICs, CPU affinity) are ignored. Reading only; the check judges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NVLINK = re.compile(r"^NV(\d+)$")
PCIE_PATHS = ("PIX", "PXB", "PHB", "NODE", "SYS")


@dataclass(frozen=True)
class Link:
    """The path between two GPUs: "nvlink" with its link count, or "pcie" with its kind."""

    kind: str  # "nvlink", "pcie" or "unknown"
    path: str  # the matrix cell: "NV18", "PXB", "SYS", ...
    nvlinks: int = 0


def parse_matrix(text: str) -> dict[tuple[int, int], Link]:
    """Every GPU pair (lower index first) -> its Link; {} when the text holds no matrix."""
    rows: dict[int, list[str]] = {}
    for raw in text.splitlines():
        line = _ANSI.sub("", raw)
        fields = line.split()
        if fields and re.fullmatch(r"GPU\d+", fields[0]):
            rows[int(fields[0][3:])] = fields[1:]
    count = len(rows)
    links: dict[tuple[int, int], Link] = {}
    for first, cells in rows.items():
        for second in range(count):
            if second <= first or second >= len(cells):
                continue
            cell = cells[second]
            if found := _NVLINK.match(cell):
                links[(first, second)] = Link("nvlink", cell, int(found.group(1)))
            elif cell in PCIE_PATHS:
                links[(first, second)] = Link("pcie", cell)
            else:
                links[(first, second)] = Link("unknown", cell)
    return links
