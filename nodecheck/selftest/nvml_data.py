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
- the other seven GPUs' bus ids, UUIDs and 18 NVLinks are those of the HGX H100 baseboard
  that tests/fixtures/nvml/make_fixtures.py also starts from (nodecheck.probes.nvml.handmade);
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
from typing import TYPE_CHECKING, Any

from nodecheck.probes.nvml import handmade
from nodecheck.probes.nvml.model import GPU_IS_LOST

if TYPE_CHECKING:
    from nodecheck.checks.registry import NvmlCanary

MODEL = handmade.H100_NAME
DRIVER = "565.57.01"
CUDA = 12070  # "CUDA Version: 12.7"
GPUS = 8
POWER_LIMIT_W = handmade.H100_POWER_LIMIT_W
PCI_BUS_IDS = handmade.H100_PCI_BUS_IDS
REAL_GPU0_UUID = "GPU-b42dd28e-ffdd-8720-1df0-98bd8cdc05b1"  # the real GPU 0 of h100-sxm-565.txt
MIB = 1024**2
MEM_USED_IDLE = (454 + 1) * MIB  # NVML's v1 memory info counts the reserved part as used


def _gpu(index: int) -> dict[str, Any]:
    """The shared idle HGX H100 (handmade.hgx_h100) with h100-sxm-565.txt's values."""
    return handmade.hgx_h100(
        index,
        memory_used=MEM_USED_IDLE,
        temperature_c=30 + index % 4,
        power_usage_mw=100890 + 1137 * index,
        recovery_action=0,  # "GPU Recovery Action: None"
        **({"uuid": REAL_GPU0_UUID} if index == 0 else {}),
    )


def healthy() -> dict[str, Any]:
    return {
        "comment": "nodecheck selftest canary: HGX H100 80GB, 8 GPUs, idle and healthy",
        "source": "selftest",
        "driver_version": DRIVER,
        "cuda_driver_version": CUDA,
        "device_count": GPUS,
        "gpus": [_gpu(i) for i in range(GPUS)],
    }


def _lost(snap: dict[str, Any]) -> None:
    snap["gpus"][3] = {"index": 3, "errors": {"handle": handmade.error(GPU_IS_LOST)}}


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
        gpu["fabric"]["state"] = 1  # NVML_GPU_FABRIC_STATE_NOT_STARTED


def _leftover(snap: dict[str, Any]) -> None:
    gpu = snap["gpus"][0]
    held = 40802189312  # 38 GiB
    gpu["processes"] = [{"pid": 48213, "usedGpuMemory": held}]
    gpu["memory"] = handmade.memory(handmade.H100_MEMORY_TOTAL, MEM_USED_IDLE + held)


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
    """The healthy node, or the node with one fault of FAULTS, with every model field."""
    snap = healthy()
    if fault is not None:
        what, change = FAULTS[fault]
        change(snap)
        snap["comment"] = f"nodecheck selftest canary: {what}"
    return handmade.complete(snap)


def declared(canary: NvmlCanary, bad: bool) -> dict[str, Any]:
    """The node of a check's declared canary (registry.NvmlCanary): the healthy node with its
    `healthy` fields on every GPU, and for the bad input its `values` on GPU `gpu`. Copies:
    the declaration is the check's, shared by every run. A field the model lacks, or a GPU
    the node lacks, raises here (the selftest reports the canary as an error)."""
    snap = healthy()
    for gpu in snap["gpus"]:
        gpu.update(copy.deepcopy(dict(canary.healthy)))
    if bad:
        if not 0 <= canary.gpu < GPUS:
            raise ValueError(f"canary gpu {canary.gpu}: the canary node has gpu0-{GPUS - 1}")
        snap["gpus"][canary.gpu].update(copy.deepcopy(dict(canary.values)))
        snap["comment"] = f"nodecheck selftest canary: {canary.says}"
    return handmade.complete(snap)


def write(directory: Path, fault: str | None = None) -> str:
    """Write the snapshot into `directory`; the `nvml` setting that replays it."""
    return write_snapshot(directory, fault or "healthy", snapshot(fault))


def write_snapshot(directory: Path, name: str, snap: dict[str, Any]) -> str:
    """Write the snapshot into `directory` as `name`; the `nvml` setting that replays it."""
    path = directory / f"nvml-{name}.json"
    path.write_text(handmade.dump(snap), encoding="utf-8")
    return f"replay:{path}"
