"""Canary NVML states: a healthy 8x H100 SXM node, and the faults the gpu.* checks exist for.

Replayed through the NVML adapter exactly as a site's `nvml = "replay:/path.json"` would be
(nodecheck.probes.nvml.replay). The package cannot read the project's tests/, so the data
is derived here, from the project's real-data fixtures:

- the healthy GPU is `nvidia-smi -q` of an H100 80GB HBM3 SXM
  (tests/fixtures/real/nvidia-smi/h100-sxm-565.txt, from thamada/nvidia-smi,
  nvsim/H100SXMx8_smi.py): driver 565.57.01, CUDA 12.7, 81559 MiB (454 MiB reserved, 1 MiB
  used), PCIe gen5 x16, 700 W limit, 100.89 W and 30 C at idle, persistence on, MIG off,
  compute mode Default, ECC on with no error, no row remapped, fabric Completed/Success,
  GPU recovery action None;
- the other seven GPUs' bus ids, UUIDs and 18 NVLinks are those of the HGX H100 baseboard in
  tests/fixtures/nvml/make_fixtures.py;
- each fault changes only what make_fixtures.py changes for it (lost GPU, missing GPU, DBE
  with a pending remap, pending remap, remap failure, PCIe x8, NVLink down, HW slowdown, hot
  at idle, fabric manager not running, a leftover process, Xid 154's recovery action); the
  swapped board is named as the A100 of tests/fixtures/real/nvidia-smi/a100-sxm4-40gb-535.txt,
  and the driver a node was left on is that node's (535.129.03, CUDA 12.2).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodecheck.probes.nvml.model import NVLINK_COUNTERS, dumps

FORMAT = "nodecheck-nvml-snapshot/1"
MODEL = "NVIDIA H100 80GB HBM3"
DRIVER = "565.57.01"
CUDA = 12070  # "CUDA Version: 12.7"
GPUS = 8
NVLINKS = 18  # H100 SXM
POWER_LIMIT_W = 700
BUSES = ["18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"]
PCI_BUS_IDS = [f"00000000:{bus}:00.0" for bus in BUSES]
UUIDS = [
    "GPU-b42dd28e-ffdd-8720-1df0-98bd8cdc05b1",  # the real GPU 0 of h100-sxm-565.txt
    "GPU-0f2a7b3c-51d6-4e8f-9a0b-1c2d3e4f5a61",
    "GPU-8a9b0c1d-2e3f-4a5b-6c7d-8e9f0a1b2c72",
    "GPU-3c4d5e6f-7a8b-4c9d-0e1f-2a3b4c5d6e83",
    "GPU-b1c2d3e4-f5a6-4b7c-8d9e-0f1a2b3c4d94",
    "GPU-5e6f7a8b-9c0d-4e1f-2a3b-4c5d6e7f8aa5",
    "GPU-c7d8e9f0-a1b2-4c3d-4e5f-6a7b8c9d0eb6",
    "GPU-2f3a4b5c-6d7e-4f8a-9b0c-1d2e3f4a5bc7",
]
MIB = 1024**2
MEM_TOTAL = 81559 * MIB
MEM_USED_IDLE = (454 + 1) * MIB  # NVML's v1 memory info counts the reserved part as used
COUNTERS = NVLINK_COUNTERS  # the legacy per-link counters the model names


def _gpu(index: int) -> dict[str, Any]:
    return {
        "index": index,
        "minor_number": index,
        "name": MODEL,
        "uuid": UUIDS[index],
        "pci_bus_id": PCI_BUS_IDS[index],
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
        "retired_pages_pending": None,
        "retired_pages_sbe": None,
        "retired_pages_dbe": None,
        "pcie_gen_current": 5,
        "pcie_gen_max": 5,
        "pcie_width_current": 16,
        "pcie_width_max": 16,
        "nvlinks": [
            {"link": link, "active": True, "counters": dict.fromkeys(COUNTERS, 0), "errors": {}}
            for link in range(NVLINKS)
        ],
        "clocks_event_reasons": 0x1,  # "Idle: Active", nothing else
        "temperature_c": 30 + index % 4,
        "power_usage_mw": 100890 + 1137 * index,
        "power_limit_mw": POWER_LIMIT_W * 1000,
        "persistence_mode": True,
        "mig_mode_current": False,
        "mig_mode_pending": False,
        "compute_mode": 0,  # Default
        "fabric": {"state": 3, "status": 0, "healthMask": 0, "healthSummary": None},
        "processes": [],
        "graphics_processes": [],
        "memory": {"total": MEM_TOTAL, "free": MEM_TOTAL - MEM_USED_IDLE, "used": MEM_USED_IDLE},
        "recovery_action": 0,  # "GPU Recovery Action: None"
        "errors": {},
    }


def healthy() -> dict[str, Any]:
    return {
        "format": FORMAT,
        "comment": "nodecheck selftest canary: HGX H100 80GB, 8 GPUs, idle and healthy",
        "source": "selftest",
        "init_error": None,
        "driver_version": DRIVER,
        "cuda_driver_version": CUDA,
        "device_count": GPUS,
        "gpus": [_gpu(i) for i in range(GPUS)],
        "errors": {},
        "selected": None,
    }


def _lost(snap: dict[str, Any]) -> None:
    snap["gpus"][3] = {
        "index": 3,
        "errors": {"handle": {"code": 15, "name": "NVML_ERROR_GPU_IS_LOST", "message": ""}},
    }


def _missing(snap: dict[str, Any]) -> None:
    snap["device_count"] = 7
    snap["gpus"] = snap["gpus"][:7]


def _model(snap: dict[str, Any]) -> None:
    snap["gpus"][5]["name"] = "NVIDIA A100-SXM4-40GB"


def _old_driver(snap: dict[str, Any]) -> None:
    snap["driver_version"] = "535.129.03"
    snap["cuda_driver_version"] = 12020


def _dbe(snap: dict[str, Any]) -> None:
    gpu = snap["gpus"][5]
    gpu.update(ecc_uncorrected_volatile=2, ecc_uncorrected_aggregate=2)
    gpu.update(ecc_corrected_volatile=14, ecc_corrected_aggregate=14)
    gpu["remapped_rows"] = {
        "corrRows": 0,
        "uncRows": 1,
        "isPending": True,
        "failureOccurred": False,
    }


def _remap_pending(snap: dict[str, Any]) -> None:
    rows = {"corrRows": 1, "uncRows": 0, "isPending": True, "failureOccurred": False}
    snap["gpus"][3]["remapped_rows"] = rows


def _remap_failure(snap: dict[str, Any]) -> None:
    gpu = snap["gpus"][6]
    gpu["remapped_rows"] = {
        "corrRows": 0,
        "uncRows": 8,
        "isPending": False,
        "failureOccurred": True,
    }
    gpu["ecc_uncorrected_aggregate"] = 9


def _recovery_reboot(snap: dict[str, Any]) -> None:
    snap["gpus"][2]["recovery_action"] = 2  # Node Reboot Required (what Xid 154 announces)


def _pcie_x8(snap: dict[str, Any]) -> None:
    snap["gpus"][2]["pcie_width_current"] = 8


def _nvlink_down(snap: dict[str, Any]) -> None:
    snap["gpus"][4]["nvlinks"][7] = {"link": 7, "active": False, "counters": {}, "errors": {}}


def _hw_slowdown(snap: dict[str, Any]) -> None:
    snap["gpus"][1]["clocks_event_reasons"] = 0x1 | 0x8


def _hot_idle(snap: dict[str, Any]) -> None:
    gpu = snap["gpus"][7]
    gpu.update(temperature_c=88, power_usage_mw=412337, clocks_event_reasons=0x20)


def _persistence_off(snap: dict[str, Any]) -> None:
    snap["gpus"][0]["persistence_mode"] = False


def _mig_on(snap: dict[str, Any]) -> None:
    snap["gpus"][1].update(mig_mode_current=True, mig_mode_pending=True)


def _prohibited(snap: dict[str, Any]) -> None:
    snap["gpus"][6]["compute_mode"] = 2  # Prohibited: no CUDA context can be made


def _fabric_not_started(snap: dict[str, Any]) -> None:
    for gpu in snap["gpus"]:
        gpu["fabric"] = {"state": 1, "status": 0, "healthMask": 0, "healthSummary": None}


def _leftover(snap: dict[str, Any]) -> None:
    gpu = snap["gpus"][0]
    held = 40802189312  # 38 GiB
    gpu["processes"] = [{"pid": 48213, "usedGpuMemory": held}]
    used = MEM_USED_IDLE + held
    gpu["memory"] = {"total": MEM_TOTAL, "free": MEM_TOTAL - used, "used": used}


# name -> (what is wrong, the change to the healthy node)
FAULTS: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "lost-gpu": ("gpu3 lost (NVML_ERROR_GPU_IS_LOST)", _lost),
    "missing-gpu": ("gpu7 gone from the bus: 7 of 8 GPUs visible", _missing),
    "swapped-model": ("gpu5 is an A100-SXM4-40GB", _model),
    "old-driver": ("driver 535.129.03 / CUDA 12.2 left behind", _old_driver),
    "dbe": ("gpu5: 2 uncorrectable (DBE) ECC errors since reset", _dbe),
    "remap-pending": ("gpu3: row remap pending", _remap_pending),
    "remap-failure": ("gpu6: row remap failure (out of spare rows)", _remap_failure),
    "recovery-reboot": ("gpu2: recovery action Node Reboot Required (Xid 154)", _recovery_reboot),
    "pcie-x8": ("gpu2: PCIe link trained at x8 of x16", _pcie_x8),
    "nvlink-down": ("gpu4: NVLink 7 inactive", _nvlink_down),
    "hw-slowdown": ("gpu1: HW slowdown asserted at idle", _hw_slowdown),
    "hot-idle": ("gpu7: 88 C and 412 W at idle", _hot_idle),
    "persistence-off": ("gpu0: persistence mode off", _persistence_off),
    "mig-on": ("gpu1: MIG enabled", _mig_on),
    "prohibited": ("gpu6: compute mode Prohibited", _prohibited),
    "fabric-not-started": ("fabric registration not started on every GPU", _fabric_not_started),
    "leftover-process": ("gpu0: a process of the finished job holds 38 GiB", _leftover),
}


def snapshot(fault: str | None = None) -> dict[str, Any]:
    """The healthy node, or the node with one fault of FAULTS."""
    snap = healthy()
    if fault is not None:
        what, change = FAULTS[fault]
        snap = copy.deepcopy(snap)
        change(snap)
        snap["comment"] = f"nodecheck selftest canary: {what}"
    return snap


def write(directory: Path, fault: str | None = None) -> str:
    """Write the snapshot into `directory`; the `nvml` setting that replays it."""
    path = directory / f"nvml-{fault or 'healthy'}.json"
    path.write_text(dumps(snapshot(fault)), encoding="utf-8")
    return f"replay:{path}"
