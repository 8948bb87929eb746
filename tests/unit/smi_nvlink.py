"""`nvidia-smi nvlink -s` and `nvidia-smi nvlink -e` outputs as data, for the tests that make
NVML answer NVLink questions from published output (tests/fixtures/real/nvidia-smi/).

Published outputs elide identical links with a `[...]` line; the links it stands for are
given the values of the link before it, which is what the elision says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

# `nvidia-smi nvlink -e` line label -> the counter (model.NVLINK_COUNTER_SPECS name). On
# Hopper "CRC Errors" is the flit CRC counter (NVML_NVLINK_ERROR_DL_CRC_FLIT, the one the
# field NVML_FI_DEV_NVLINK_ERROR_DL_CRC replaced the per-lane CRC_FLIT fields with).
COUNTER_LABELS = {
    "Replay Errors": "replay",
    "Recovery Errors": "recovery",
    "CRC Errors": "crc_flit",
    "CRC Flit Errors": "crc_flit",
    "CRC Data Errors": "crc_data",
    "ECC Data Errors": "ecc_data",
}
_GPU = re.compile(r"^GPU (\d+): ")
_STATUS = re.compile(r"^\s*Link (\d+): (<inactive>|[\d.]+ GB/s)\s*$")
_COUNTER = re.compile(r"^\s*Link (\d+): ([A-Za-z ]+): (\d+)\s*$")


@dataclass
class SmiLinks:
    """One GPU's links: link -> active (from -s), link -> {counter: value} (from -e)."""

    active: dict[int, bool] = field(default_factory=dict)
    counters: dict[int, dict[str, int]] = field(default_factory=dict)


def _expand(values: dict[int, object], elided_after: list[int]) -> None:
    numbers = sorted(values)
    for before in elided_after:
        later = [n for n in numbers if n > before]
        for link in range(before + 1, later[0] if later else before + 1):
            values.setdefault(link, values[before])


def parse(status: str, errors: str = "") -> dict[int, SmiLinks]:
    """GPU index -> its links, from the text of `nvlink -s` and (optionally) `nvlink -e`."""
    gpus: dict[int, SmiLinks] = {}
    for text, kind in ((status, "s"), (errors, "e")):
        gpu: SmiLinks | None = None
        last: int | None = None
        elided: list[int] = []
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if match := _GPU.match(line):
                gpu, last, elided = gpus.setdefault(int(match.group(1)), SmiLinks()), None, []
                continue
            if gpu is None:
                continue
            if line.strip() == "[...]":
                if last is not None:
                    elided.append(last)
                continue
            if kind == "s" and (match := _STATUS.match(line)):
                last = int(match.group(1))
                gpu.active[last] = match.group(2) != "<inactive>"
                _expand(gpu.active, elided)  # type: ignore[arg-type]
            elif kind == "e" and (match := _COUNTER.match(line)):
                last = int(match.group(1))
                name = COUNTER_LABELS[match.group(2).strip()]
                gpu.counters.setdefault(last, {})[name] = int(match.group(3))
                for before in elided:  # copy the whole link, not one counter at a time
                    for link in range(before + 1, last):
                        gpu.counters[link] = dict(gpu.counters[before])
                elided = [b for b in elided if b >= last]
    return gpus


def load(status: Path, errors: Path | None = None) -> dict[int, SmiLinks]:
    return parse(status.read_text(), errors.read_text() if errors else "")
