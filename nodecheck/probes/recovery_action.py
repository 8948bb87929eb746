"""The GPU recovery action, read by the running driver's branch.

NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (field 230, `nvmlDeviceGpuRecoveryAction_t`) and the code
Xid 154 prints (`... changed from 0x0 (None) to 0x2 (Node Reboot Required)`) are one number
whose meaning changed between driver branches, so no single table is right:

| code | R565-R575 | R580 | R590 | R595-R610 | R615 on |
|---|---|---|---|---|---|
| 0-4 | NONE, GPU_RESET, NODE_REBOOT, DRAIN_P2P, DRAIN_AND_RESET (R570 on) | = | = | = | = |
| 5 | - | GPU_RESET_BUS | - | RECOVER_IMEX_DOMAIN | RECOVER_IMEX_DOMAIN |
| 6 | - | - | - | - | BUS_RESET |
| 7 | - | - | - | - | SYSTEM_REBOOT |

Sources (docs/gpu.md, "gpu.remap: the driver's recovery action", cites them in full): NVIDIA's
NVML API change log, https://docs.nvidia.com/deploy/nvml-api/change-log.html ("Changes
between v560 and v565": the field added; v565-v570: DRAIN_AND_RESET; v590-v595:
RECOVER_IMEX_DOMAIN added; v610-v615: BUS_RESET and SYSTEM_REBOOT added); the enum in the
nvidia-ml-py releases of each branch (12.570.172 and 12.575.51: 0-4; 13.580.65/.82/.126:
`NVML_GPU_RECOVERY_ACTION_GPU_RESET_BUS = 5`; 13.590.44/.48: 0-4 only; 13.610.43:
`RECOVER_IMEX_DOMAIN = 5`; 13.615.71: 0-7); NVIDIA/cuda-python's cynvml.pxd (0-4).

This module is plain data and pure functions: no pynvml, no files. It says what a code
means; what that means for the node (FAIL, WARN, nothing) is decided in
`nodecheck.checks.gpu.recovery`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Action:
    """One `nvmlDeviceGpuRecoveryAction_t` value as one branch's header defines it."""

    name: str  # the enumerator without NVML_GPU_RECOVERY_ACTION_
    label: str  # for messages


NONE = Action("NONE", "None")
GPU_RESET = Action("GPU_RESET", "GPU Reset Required")
NODE_REBOOT = Action("NODE_REBOOT", "Node Reboot Required")
# Stop peer-to-peer traffic; the driver then reports the action it really needs.
DRAIN_P2P = Action("DRAIN_P2P", "Drain P2P")
# Reduced capacity (memory offlined) until the GPU is reset.
DRAIN_AND_RESET = Action("DRAIN_AND_RESET", "Drain and Reset")
# R580 only: the GPU needs a reset of its PCIe bus (a reset of the GPU, or a reboot).
GPU_RESET_BUS = Action("GPU_RESET_BUS", "GPU Bus Reset Required")
# R595 on: the multi-node NVLink (IMEX) domain needs recovering, not this GPU.
RECOVER_IMEX_DOMAIN = Action("RECOVER_IMEX_DOMAIN", "Recover IMEX Domain")
BUS_RESET = Action("BUS_RESET", "Bus Reset Required")
SYSTEM_REBOOT = Action("SYSTEM_REBOOT", "System Reboot Required")
# The branch is unknown (no driver version): 5 is a bus reset or an IMEX recovery.
EITHER_5 = Action(
    "GPU_RESET_BUS or RECOVER_IMEX_DOMAIN",
    "Bus Reset or Recover IMEX Domain (driver branch unknown)",
)

_BASE: Mapping[int, Action] = {
    0: NONE,
    1: GPU_RESET,
    2: NODE_REBOOT,
    3: DRAIN_P2P,
    4: DRAIN_AND_RESET,
}
# (first branch, its table), oldest first: a branch uses the last row not newer than it.
# A branch older than the first row gets the first (the field does not exist there; a value
# from a replayed file is read as the oldest header reads it); newer ones the last.
BRANCH_TABLES: tuple[tuple[int, Mapping[int, Action]], ...] = (
    (565, _BASE),
    (580, {**_BASE, 5: GPU_RESET_BUS}),
    (590, _BASE),
    (595, {**_BASE, 5: RECOVER_IMEX_DOMAIN}),
    (615, {**_BASE, 5: RECOVER_IMEX_DOMAIN, 6: BUS_RESET, 7: SYSTEM_REBOOT}),
)
UNKNOWN_BRANCH: Mapping[int, Action] = {**_BASE, 5: EITHER_5, 6: BUS_RESET, 7: SYSTEM_REBOOT}


def driver_branch(version: str | None) -> int | None:
    """'570.86.15' -> 570; None when the version is missing or not a driver version."""
    match = re.match(r"\s*(\d{3,4})\.\d+", version or "")
    return int(match.group(1)) if match else None


def module_version(text: str) -> str | None:
    """The driver version in /proc/driver/nvidia/version, proprietary or open module:
    'NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 ...' or
    'NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build ...'."""
    match = re.search(r"NVRM version:.*?Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def table(branch: int | None) -> Mapping[int, Action]:
    if branch is None:
        return UNKNOWN_BRANCH
    chosen = BRANCH_TABLES[0][1]
    for first, rows in BRANCH_TABLES:
        if branch >= first:
            chosen = rows
    return chosen


__all__ = ["BRANCH_TABLES", "Action", "driver_branch", "module_version", "table"]
