"""Snapshots made by hand, as replay-file data: what the test fixtures
(tests/fixtures/nvml/make_fixtures.py) and the selftest's canaries
(nodecheck/selftest/nvml_data.py) are built from.

A scenario names only the values it needs; everything else is the model's default, filled
in by `dump` (through Snapshot.from_dict, so a misspelt key fails here and not in a replay).
A field added to the model therefore reaches every generated file without a change here or
in either generator. `hgx_h100` is the one healthy H100 GPU both generators start from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nodecheck.probes.nvml import model

# An HGX H100 80GB baseboard: its eight GPUs' PCI buses, and UUIDs for them (modelled:
# UUIDs are per part, a node made by hand gets made-up ones).
H100_NAME = "NVIDIA H100 80GB HBM3"
H100_PCI_BUS_IDS = [
    f"00000000:{bus}:00.0" for bus in ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")
]
H100_UUIDS = [
    "GPU-6d8e1c41-9f4a-2b7c-3e55-0a1b2c3d4e50",
    "GPU-0f2a7b3c-51d6-4e8f-9a0b-1c2d3e4f5a61",
    "GPU-8a9b0c1d-2e3f-4a5b-6c7d-8e9f0a1b2c72",
    "GPU-3c4d5e6f-7a8b-4c9d-0e1f-2a3b4c5d6e83",
    "GPU-b1c2d3e4-f5a6-4b7c-8d9e-0f1a2b3c4d94",
    "GPU-5e6f7a8b-9c0d-4e1f-2a3b-4c5d6e7f8aa5",
    "GPU-c7d8e9f0-a1b2-4c3d-4e5f-6a7b8c9d0eb6",
    "GPU-2f3a4b5c-6d7e-4f8a-9b0c-1d2e3f4a5bc7",
]
H100_NVLINKS = 18  # H100 SXM
H100_MEMORY_TOTAL = 81559 * 1024**2  # bytes, as nvmlDeviceGetMemoryInfo gives it
H100_POWER_LIMIT_W = 700


def error(code: int) -> dict[str, Any]:
    """An NVML error as a replay file holds it: code, name and message (model.ERROR_CODES)."""
    return model.to_plain(model.NvmlError(code))


def nvlinks(
    count: int, counters: Iterable[str], errors: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """`count` active NVLinks, each with `counters` at 0 and `errors` (counter -> error)."""
    names = tuple(counters)
    return [
        {
            "link": link,
            "active": True,
            "counters": dict.fromkeys(names, 0),
            "errors": dict(errors or {}),
        }
        for link in range(count)
    ]


def memory(total: int, used: int) -> dict[str, int]:
    return {"total": total, "free": total - used, "used": used}


def hgx_h100(index: int, *, memory_used: int, **values: Any) -> dict[str, Any]:
    """GPU `index` of an HGX H100 80GB at idle and healthy: ECC on and clean, no row
    remapped, PCIe gen5 x16, 18 NVLinks up with their legacy counters at 0, 700 W limit,
    persistence on, MIG off, compute mode Default, fabric registration completed, no process.
    `values` are what differs between the nodes built from it (temperature, power, what the
    driver branch can read) and replace the healthy ones."""
    healthy = {
        "index": index,
        "minor_number": index,
        "name": H100_NAME,
        "uuid": H100_UUIDS[index],
        "pci_bus_id": H100_PCI_BUS_IDS[index],
        "ecc_mode_current": True,
        "ecc_mode_pending": True,
        "ecc_uncorrected_volatile": 0,
        "ecc_uncorrected_aggregate": 0,
        "ecc_corrected_volatile": 0,
        "ecc_corrected_aggregate": 0,
        "remapped_rows": {
            "corrRows": 0,
            "uncRows": 0,
            "isPending": False,
            "failureOccurred": False,
        },
        "pcie_gen_current": 5,
        "pcie_gen_max": 5,
        "pcie_width_current": 16,
        "pcie_width_max": 16,
        "nvlinks": nvlinks(H100_NVLINKS, model.NVLINK_COUNTERS),
        "clocks_event_reasons": model.CLOCK_EVENT_REASONS["gpu_idle"],
        "power_limit_mw": H100_POWER_LIMIT_W * 1000,
        "persistence_mode": True,
        "mig_mode_current": False,
        "mig_mode_pending": False,
        "compute_mode": 0,  # NVML_COMPUTEMODE_DEFAULT
        "fabric": {"state": model.FABRIC_STATE_COMPLETED, "status": 0, "healthMask": 0},
        "processes": [],
        "graphics_processes": [],
        "memory": memory(H100_MEMORY_TOTAL, memory_used),
    }
    return {**healthy, **values}


def complete(data: Mapping[str, Any]) -> dict[str, Any]:
    """A hand-made snapshot with every model field: the defaults filled in, each record and
    key checked, in the model's order (what a recorded snapshot looks like). `comment` and a
    `replay` table are kept."""
    full = model.Snapshot.from_dict(data).to_dict()
    head = {"format": full.pop("format")}
    if "comment" in data:
        head["comment"] = data["comment"]
    tail = {"replay": data["replay"]} if "replay" in data else {}
    return {**head, **full, **tail}


def dump(data: Mapping[str, Any]) -> str:
    """The replay file of a hand-made snapshot (complete, one line per field)."""
    return model.dumps(complete(data))
