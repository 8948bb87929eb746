"""The NVML adapter through the REAL nvidia-ml-py bindings, on real GPUs' values.

pynvml's own Python code runs unchanged: its wrappers build their ctypes structs
(`c_nvmlPciInfo_t`, `c_nvmlFieldValue_t`, `c_nvmlProcessInfo_v3_t`, ...), check return codes
and raise their own NVMLError subclasses. Only the shared library under it is replaced: the
C entry points answer from a published `nvidia-smi -q` of an H100, an A100, an A10G and a
GeForce RTX 4090 (tests/fixtures/real/nvidia-smi/, sources in SOURCES.md), the way the
driver does (milliwatts, bytes, enum codes, NVML_ERROR_NOT_SUPPORTED where nvidia-smi
prints N/A, the two-call size protocol of the process lists).

NVLink is answered from the same H100 SXM's published `nvidia-smi nvlink -s` and
`nvidia-smi nvlink -e` (tests/unit/smi_nvlink.py reads them): the link count, each link's
state and its error counters, through the legacy call or, as on Blackwell where the legacy
counters are gone, through the per-link field values.

The checks then judge those snapshots: what a node with that GPU would get. With a real
GPU (`gpu` marker), the same comparison runs against the real library and the machine's
own `nvidia-smi -q`.

`make test-nvml-matrix` runs this module once per supported nvidia-ml-py release (the
oldest first on sys.path): the stand-in exports what the real libnvidia-ml exports, and each
release's wrappers must reach it.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml
import pytest
import smi_nvlink
from helpers import make_ctx, options_of

from nodecheck.checks.registry import all_checks
from nodecheck.core.results import Status
from nodecheck.probes import nvml
from nodecheck.probes.nvml import real
from nodecheck.probes.nvml.model import CLOCK_EVENT_REASONS, Snapshot

SMI = Path(__file__).parents[1] / "fixtures" / "real" / "nvidia-smi"
MIB = 1024**2
SUCCESS, INVALID_ARGUMENT, NOT_SUPPORTED, INSUFFICIENT_SIZE = 0, 2, 3, 7
# Which published NVLink outputs go with which `nvidia-smi -q` (GPU 0 of each).
NVLINK_DUMPS = {"h100-sxm-565.txt": ("h100-sxm-nvlink-s.txt", "h100-sxm-nvlink-e.txt")}
# nvmlNvLinkErrorCounter_t -> `nvidia-smi nvlink -e` counter; field id (scope: link) -> same.
LEGACY_COUNTERS = dict(enumerate(("replay", "recovery", "crc_flit", "crc_data", "ecc_data")))
NVLINK_FIELDS = {161: "replay", 162: "recovery", 163: "crc_flit"}
FI_NVLINK_LINK_COUNT, FI_GPU_RECOVERY_ACTION = 91, 230  # field ids (nvml.h): not every
# supported pynvml release names the second one, the driver knows it all the same
# nvidia-smi's "Clocks Event Reasons" lines -> the bit NVML reports.
REASON_LINES = {
    "Idle": "gpu_idle",
    "Applications Clocks Setting": "applications_clocks_setting",
    "SW Power Cap": "sw_power_cap",
    "HW Slowdown": "hw_slowdown",
    "HW Thermal Slowdown": "hw_thermal_slowdown",
    "HW Power Brake Slowdown": "hw_power_brake_slowdown",
    "Sync Boost": "sync_boost",
    "SW Thermal Slowdown": "sw_thermal_slowdown",
    "Display Clock Setting": "display_clock_setting",
}
COMPUTE_MODES = {"Default": 0, "Exclusive_Thread": 1, "Prohibited": 2, "Exclusive_Process": 3}
FABRIC_STATES = {"Not Supported": 0, "Not Started": 1, "In Progress": 2, "Completed": 3}
RECOVERY = {"None": 0, "Reset Required": 1, "Node Reboot Required": 2, "Drain P2P": 3}
HEALTH_MASK_NOT_REPORTED = 0


# --- nvidia-smi -q as data -------------------------------------------------------------


@dataclass(frozen=True)
class SmiGpu:
    """One GPU section of `nvidia-smi -q`: 'Section/Key' -> value text, and its processes."""

    values: dict[str, str]
    processes: tuple[tuple[int, str, int], ...]  # (pid, type C/G/C+G, used MiB)

    def get(self, path: str) -> str | None:
        value = self.values.get(path)
        return None if value in (None, "N/A") else value


def parse_smi(text: str) -> tuple[dict[str, str], list[SmiGpu]]:
    """The header fields and the GPU sections of `nvidia-smi -q` (4-space indents)."""
    header: dict[str, str] = {}
    gpus: list[SmiGpu] = []
    values: dict[str, str] | None = None
    procs: list[list[Any]] = []
    stack: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", "=")):
            continue
        if line.startswith("GPU "):
            if values is not None:
                gpus.append(SmiGpu(values, tuple(map(tuple, procs))))
            values, procs, stack = {"Bus Id": line[4:].strip()}, [], []
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 4
        key, colon, value = line.strip().partition(":")
        key, value = key.strip(), value.strip()
        if values is None:
            header[key] = value
            continue
        stack = [*stack[: depth - 1], key]
        if stack[0] == "Processes" and colon:
            if key == "Process ID":
                procs.append([int(value), "", 0])
            elif key == "Type" and procs:
                procs[-1][1] = value
            elif key == "Used GPU Memory" and procs:
                procs[-1][2] = int(value.split()[0])
            continue
        if colon:
            values["/".join(stack)] = value
    if values is not None:
        gpus.append(SmiGpu(values, tuple(map(tuple, procs))))
    return header, gpus


# --- a libnvidia-ml that answers from nvidia-smi's values --------------------------------


def _out(ref: Any) -> Any:
    """The object a pynvml wrapper passed by reference (byref(x) -> x)."""
    return getattr(ref, "_obj", ref)


def _int(arg: Any) -> int:
    """An integer argument: pynvml passes some as ctypes objects, some as plain ints, and
    not the same way in every release."""
    return int(getattr(arg, "value", arg))


def _number(value: str | None) -> float | None:
    return None if value is None else float(value.split()[0].rstrip("x"))


class SmiLibrary:
    """Stands in for libnvidia-ml.so.1 under the real pynvml: one attribute per C entry
    point pynvml looks up; a symbol that is not here is NVML_ERROR_FUNCTION_NOT_FOUND,
    as with a real older library."""

    def __init__(
        self,
        header: dict[str, str],
        gpus: list[SmiGpu],
        nvlinks: dict[int, smi_nvlink.SmiLinks] | None = None,
    ) -> None:
        self.header, self.gpus = header, gpus
        self.nvlinks = nvlinks or {}
        self.legacy_nvlink_counters = True  # False: as on Blackwell (NVML change log v565)
        self.nvlink_fields = True  # False: the per-link error fields refused too

    # system
    def nvmlInitWithFlags(self, flags: int) -> int:
        return SUCCESS

    def nvmlShutdown(self) -> int:
        return SUCCESS

    def nvmlSystemGetDriverVersion(self, buf: Any, size: Any) -> int:
        buf.value = self.header["Driver Version"].encode()
        return SUCCESS

    def nvmlSystemGetCudaDriverVersion(self, ref: Any) -> int:
        major, minor = self.header["CUDA Version"].split(".")
        _out(ref).value = int(major) * 1000 + int(minor) * 10
        return SUCCESS

    def nvmlDeviceGetCount_v2(self, ref: Any) -> int:
        _out(ref).value = len(self.gpus)
        return SUCCESS

    def nvmlDeviceGetHandleByIndex_v2(self, index: Any, ref: Any) -> int:
        i = _int(index)
        if i >= len(self.gpus):
            return 2  # NVML_ERROR_INVALID_ARGUMENT
        pointer = ctypes.c_void_p(i + 1)  # a handle is opaque: the index, off by one
        ctypes.memmove(ctypes.addressof(_out(ref)), ctypes.addressof(pointer), 8)
        return SUCCESS

    # per device
    def _gpu(self, handle: Any) -> SmiGpu:
        return self.gpus[ctypes.cast(handle, ctypes.c_void_p).value - 1]

    def _scalar(self, handle: Any, ref: Any, value: float | None) -> int:
        if value is None:
            return NOT_SUPPORTED
        _out(ref).value = int(value)
        return SUCCESS

    def _text(self, handle: Any, buf: Any, key: str) -> int:
        value = self._gpu(handle).get(key)
        if value is None:
            return NOT_SUPPORTED
        buf.value = value.encode()
        return SUCCESS

    def nvmlDeviceGetName(self, h: Any, buf: Any, size: Any) -> int:
        return self._text(h, buf, "Product Name")

    def nvmlDeviceGetUUID(self, h: Any, buf: Any, size: Any) -> int:
        return self._text(h, buf, "GPU UUID")

    def nvmlDeviceGetMinorNumber(self, h: Any, ref: Any) -> int:
        return self._scalar(h, ref, _number(self._gpu(h).get("Minor Number")))

    def nvmlDeviceGetPciInfo_v3(self, h: Any, ref: Any) -> int:
        info = _out(ref)
        bus_id = self._gpu(h).get("PCI/Bus Id") or ""
        info.busId = bus_id.encode()
        info.busIdLegacy = bus_id[-12:].encode()
        return SUCCESS

    def _enabled(self, h: Any, key: str) -> bool | None:
        value = self._gpu(h).get(key)
        return None if value is None else value == "Enabled"

    def _pair(self, h: Any, current: Any, pending: Any, section: str) -> int:
        now, then = self._enabled(h, f"{section}/Current"), self._enabled(h, f"{section}/Pending")
        if now is None or then is None:
            return NOT_SUPPORTED
        _out(current).value, _out(pending).value = int(now), int(then)
        return SUCCESS

    def nvmlDeviceGetEccMode(self, h: Any, current: Any, pending: Any) -> int:
        return self._pair(h, current, pending, "ECC Mode")

    def nvmlDeviceGetMigMode(self, h: Any, current: Any, pending: Any) -> int:
        return self._pair(h, current, pending, "MIG Mode")

    def nvmlDeviceGetTotalEccErrors(self, h: Any, kind: Any, counter: Any, ref: Any) -> int:
        gpu = self._gpu(h)
        scope = "Volatile" if counter.value == 0 else "Aggregate"
        word = "Uncorrectable" if kind.value == 1 else "Correctable"
        keys = [k for k in gpu.values if k.startswith(f"ECC Errors/{scope}/") and f" {word}" in k]
        counts = [_number(gpu.get(k)) for k in keys]
        if not counts or None in counts:
            return NOT_SUPPORTED
        _out(ref).value = int(sum(counts))  # type: ignore[arg-type]
        return SUCCESS

    def nvmlDeviceGetRemappedRows(self, h: Any, corr: Any, unc: Any, pend: Any, fail: Any) -> int:
        gpu = self._gpu(h)
        rows = [gpu.get(f"Remapped Rows/{k}") for k in ("Correctable Error", "Uncorrectable Error")]
        flags = [gpu.get(f"Remapped Rows/{k}") for k in ("Pending", "Remapping Failure Occurred")]
        if None in rows or None in flags:
            return NOT_SUPPORTED
        _out(corr).value, _out(unc).value = (int(v) for v in rows)  # type: ignore[arg-type]
        _out(pend).value, _out(fail).value = (int(v == "Yes") for v in flags)
        return SUCCESS

    def _link(self, h: Any, ref: Any, what: str, which: str) -> int:
        return self._scalar(h, ref, _number(self._gpu(h).get(f"PCI/GPU Link Info/{what}/{which}")))

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: Any, ref: Any) -> int:
        return self._link(h, ref, "PCIe Generation", "Current")

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: Any, ref: Any) -> int:
        return self._link(h, ref, "PCIe Generation", "Max")

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: Any, ref: Any) -> int:
        return self._link(h, ref, "Link Width", "Current")

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: Any, ref: Any) -> int:
        return self._link(h, ref, "Link Width", "Max")

    def _links(self, h: Any) -> smi_nvlink.SmiLinks | None:
        return self.nvlinks.get(ctypes.cast(h, ctypes.c_void_p).value - 1)

    def nvmlDeviceGetNvLinkState(self, h: Any, link: Any, ref: Any) -> int:
        links = self._links(h)
        if links is None:
            return NOT_SUPPORTED  # no published NVLink output for this GPU: none to answer
        if _int(link) not in links.active:
            return INVALID_ARGUMENT  # a link number the part does not have
        _out(ref).value = int(links.active[_int(link)])  # NVML_FEATURE_ENABLED / DISABLED
        return SUCCESS

    def nvmlDeviceGetNvLinkErrorCounter(self, h: Any, link: Any, counter: Any, ref: Any) -> int:
        links = self._links(h)
        counters = links.counters.get(_int(link)) or {} if links else {}
        value = counters.get(LEGACY_COUNTERS[_int(counter)])
        if value is None or not self.legacy_nvlink_counters:
            return NOT_SUPPORTED  # nvidia-smi prints no such counter: the driver has none
        _out(ref).value = value
        return SUCCESS

    def _field(self, h: Any, field_id: int, scope: int) -> int | None:
        """A field's value, or None for NVML_ERROR_NOT_SUPPORTED in that field."""
        links = self._links(h)
        if field_id == FI_GPU_RECOVERY_ACTION:
            action = self._gpu(h).get("GPU Recovery Action")
            return None if action is None else RECOVERY[action]  # R565 on
        if field_id == FI_NVLINK_LINK_COUNT:
            return None if links is None else len(links.active)
        if field_id in NVLINK_FIELDS and links is not None and self.nvlink_fields:
            return (links.counters.get(scope) or {}).get(NVLINK_FIELDS[field_id])
        return None

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: Any, ref: Any) -> int:
        gpu, mask = self._gpu(h), 0
        for key, value in gpu.values.items():
            if key.startswith("Clocks Event Reasons/") and value == "Active":
                mask |= CLOCK_EVENT_REASONS[REASON_LINES[key.rsplit("/", 1)[1]]]
        _out(ref).value = mask
        return SUCCESS

    def nvmlDeviceGetTemperature(self, h: Any, sensor: Any, ref: Any) -> int:
        # deprecated but exported by every driver; pynvml before 12.570 has only this one
        assert _int(sensor) == pynvml.NVML_TEMPERATURE_GPU
        return self._scalar(h, ref, _number(self._gpu(h).get("Temperature/GPU Current Temp")))

    def nvmlDeviceGetTemperatureV(self, h: Any, ref: Any) -> int:
        reading = _out(ref)
        assert reading.sensorType == pynvml.NVML_TEMPERATURE_GPU
        value = _number(self._gpu(h).get("Temperature/GPU Current Temp"))
        if value is None:
            return NOT_SUPPORTED
        reading.temperature = int(value)
        return SUCCESS

    def _milliwatts(self, h: Any, ref: Any, key: str) -> int:
        watts = _number(self._gpu(h).get(f"GPU Power Readings/{key}"))
        return self._scalar(h, ref, None if watts is None else round(watts * 1000))

    def nvmlDeviceGetPowerUsage(self, h: Any, ref: Any) -> int:
        return self._milliwatts(h, ref, "Power Draw")

    def nvmlDeviceGetEnforcedPowerLimit(self, h: Any, ref: Any) -> int:
        return self._milliwatts(h, ref, "Current Power Limit")

    def nvmlDeviceGetPersistenceMode(self, h: Any, ref: Any) -> int:
        enabled = self._enabled(h, "Persistence Mode")
        return self._scalar(h, ref, None if enabled is None else int(enabled))

    def nvmlDeviceGetComputeMode(self, h: Any, ref: Any) -> int:
        mode = self._gpu(h).get("Compute Mode")
        return self._scalar(h, ref, None if mode is None else COMPUTE_MODES[mode])

    def _fabric(self, h: Any, info: Any) -> int:
        state = self._gpu(h).get("Fabric/State")
        if state is None:
            return NOT_SUPPORTED
        info.state = FABRIC_STATES[state]
        info.status = 0 if self._gpu(h).get("Fabric/Status") == "Success" else 999
        return SUCCESS

    def nvmlDeviceGetGpuFabricInfoV(self, h: Any, ref: Any) -> int:
        info = _out(ref)
        assert info.version >> 24 in (2, 3), info.version  # nvmlGpuFabricInfo_v2 or _v3
        # nvidia-smi shows no fabric health for these GPUs: every flag NOT_SUPPORTED (0). The
        # snapshot has 0, not None, only when the adapter used a struct with the member.
        info.healthMask = HEALTH_MASK_NOT_REPORTED
        return self._fabric(h, info)

    def nvmlDeviceGetGpuFabricInfo(self, h: Any, ref: Any) -> int:
        # the unversioned struct (no healthMask): every driver still exports it
        return self._fabric(h, _out(ref))

    def _processes(self, h: Any, count: Any, array: Any, kinds: str) -> int:
        procs = [p for p in self._gpu(h).processes if set(p[1].split("+")) & set(kinds)]
        wanted = _out(count)
        if array is None or wanted.value < len(procs):
            wanted.value = len(procs)
            return INSUFFICIENT_SIZE if procs else SUCCESS
        for slot, (pid, _, used_mib) in zip(array, procs, strict=False):
            slot.pid, slot.usedGpuMemory = pid, used_mib * MIB
            slot.gpuInstanceId = slot.computeInstanceId = 0xFFFFFFFF
        wanted.value = len(procs)
        return SUCCESS

    def nvmlDeviceGetComputeRunningProcesses_v3(self, h: Any, count: Any, array: Any) -> int:
        return self._processes(h, count, array, "C")

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, h: Any, count: Any, array: Any) -> int:
        return self._processes(h, count, array, "G")

    def nvmlDeviceGetMemoryInfo(self, h: Any, ref: Any) -> int:
        gpu, info = self._gpu(h), _out(ref)
        for field in ("total", "used", "free"):
            value = _number(gpu.get(f"FB Memory Usage/{field.title()}"))
            setattr(info, field, int(value) * MIB)  # type: ignore[arg-type]
        return SUCCESS

    def nvmlDeviceGetFieldValues(self, h: Any, count: Any, ref: Any) -> int:
        values = _out(ref)
        for i in range(_int(count)):
            slot = values[i]
            value = self._field(h, slot.fieldId, slot.scopeId)
            if value is None:
                slot.nvmlReturn = NOT_SUPPORTED  # in the field: the call itself succeeds
                continue
            slot.nvmlReturn = SUCCESS
            if slot.fieldId in NVLINK_FIELDS:
                slot.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                slot.value.ullVal = value
            else:
                slot.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                slot.value.uiVal = value
        return SUCCESS


@pytest.fixture
def library(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Install a library under the real pynvml module (its function-pointer cache emptied
    before and after, so no stand-in outlives the test)."""

    def install(name: str, **behaviour: bool) -> Snapshot:
        header, gpus = parse_smi((SMI / name).read_text())
        dumps = NVLINK_DUMPS.get(name)
        nvlinks = smi_nvlink.load(*(SMI / dump for dump in dumps)) if dumps else None
        lib = SmiLibrary(header, gpus, nvlinks)
        for key, value in behaviour.items():
            setattr(lib, key, value)
        monkeypatch.setattr(pynvml, "nvmlLib", lib)
        pynvml._nvmlGetFunctionPointer_cache.clear()
        return real.collect()

    pynvml._nvmlGetFunctionPointer_cache.clear()
    yield install
    pynvml._nvmlGetFunctionPointer_cache.clear()


def expected(gpu: SmiGpu) -> dict[str, Any]:
    """What the adapter must report for a GPU, in NVML's units, from its `nvidia-smi -q`."""
    mib = lambda key: int(_number(gpu.get(key))) * MIB  # noqa: E731
    return {
        "name": gpu.get("Product Name"),
        "uuid": gpu.get("GPU UUID"),
        "pci_bus_id": gpu.get("PCI/Bus Id"),
        "pcie_width_current": int(_number(gpu.get("PCI/GPU Link Info/Link Width/Current"))),
        "pcie_gen_max": int(_number(gpu.get("PCI/GPU Link Info/PCIe Generation/Max"))),
        "temperature_c": int(_number(gpu.get("Temperature/GPU Current Temp"))),
        "power_usage_mw": round(_number(gpu.get("GPU Power Readings/Power Draw")) * 1000),
        "power_limit_mw": round(_number(gpu.get("GPU Power Readings/Current Power Limit")) * 1000),
        "memory_total": mib("FB Memory Usage/Total"),
        "ecc_mode_current": gpu.get("ECC Mode/Current") == "Enabled",
        "pids": sorted(pid for pid, _, _ in gpu.processes),
    }


def observed(snap: Snapshot, index: int) -> dict[str, Any]:
    gpu = snap.gpus[index]
    procs = (*(gpu.processes or ()), *(gpu.graphics_processes or ()))
    return {
        "name": gpu.name,
        "uuid": gpu.uuid,
        "pci_bus_id": gpu.pci_bus_id,
        "pcie_width_current": gpu.pcie_width_current,
        "pcie_gen_max": gpu.pcie_gen_max,
        "temperature_c": gpu.temperature_c,
        "power_usage_mw": gpu.power_usage_mw,
        "power_limit_mw": gpu.power_limit_mw,
        "memory_total": gpu.memory.total if gpu.memory else None,
        "ecc_mode_current": bool(gpu.ecc_mode_current),
        "pids": sorted({p.pid for p in procs}),
    }


MODELS = ["h100-sxm-565.txt", "a100-sxm4-40gb-535.txt", "a10g-535.txt", "rtx4090-550.txt"]


@pytest.mark.parametrize("name", MODELS)
def test_snapshot_through_the_real_bindings_matches_nvidia_smi(library, name):
    snap = library(name)
    header, gpus = parse_smi((SMI / name).read_text())
    assert snap.init_error is None and snap.device_count == len(gpus)
    assert snap.driver_version == header["Driver Version"]
    assert observed(snap, 0) == expected(gpus[0])


def test_h100_values_in_nvml_units(library):
    gpu = library("h100-sxm-565.txt").gpus[0]
    assert (gpu.power_usage_mw, gpu.power_limit_mw) == (100890, 700000)
    assert gpu.memory.total == 81559 * MIB and gpu.memory.used == 1 * MIB
    assert gpu.clocks_event_reasons == 0x1  # idle
    assert gpu.fabric.state == pynvml.NVML_GPU_FABRIC_STATE_COMPLETED
    assert gpu.recovery_action == 0  # "GPU Recovery Action : None" (driver 565)
    assert gpu.remapped_rows.isPending is False and gpu.mig_mode_current is False
    assert gpu.fabric.healthMask == 0  # read from the versioned struct, not dropped


def test_h100_has_no_nvlink_domain_and_no_c2c(library):
    """An HGX H100 registers with its node's fabric manager, in no multi-node domain: NVML's
    clusterUuid is all zero (meta-pytorch/torchcomms #1385), kept as none, clique with it;
    a discrete GPU answers the NVLink-C2C count NOT_SUPPORTED."""
    gpu = library("h100-sxm-565.txt").gpus[0]
    assert (gpu.fabric.clusterUuid, gpu.fabric.cliqueId) == (None, None)
    assert gpu.c2c_links is None and gpu.errors["c2c"].code == NOT_SUPPORTED


def test_h100_nvlinks_from_its_published_nvlink_status_and_errors(library):
    gpu = library("h100-sxm-565.txt").gpus[0]
    # `nvidia-smi nvlink -s`: Link 0..17 at 26.562 GB/s; `-e`: replay, recovery, CRC 0 each
    assert [(link.link, link.active) for link in gpu.nvlinks] == [(n, True) for n in range(18)]
    assert {link.link: dict(link.counters) for link in gpu.nvlinks} == {
        n: {"replay": 0, "recovery": 0, "crc_flit": 0} for n in range(18)
    }
    # nvidia-smi prints no data-CRC or ECC count: the driver answers NOT_SUPPORTED
    assert set(gpu.nvlinks[0].errors) == {"crc_data", "ecc_data"}
    assert "nvlink" not in gpu.errors


def test_blackwell_without_legacy_counters_reads_the_per_link_fields(library):
    """Blackwell has no nvmlDeviceGetNvLinkErrorCounter (NVML change log, v560-v565): the
    counts come through nvmlDeviceGetFieldValues with the link as scopeId, through the real
    pynvml wrapper's (fieldId, scopeId) form."""
    gpu = library("h100-sxm-565.txt", legacy_nvlink_counters=False).gpus[0]
    assert {link.link: dict(link.counters) for link in gpu.nvlinks} == {
        n: {"replay": 0, "recovery": 0, "crc_flit": 0} for n in range(18)
    }
    # what neither source had keeps its error, the NVLink5 counters included
    assert gpu.nvlinks[5].errors["link_recovery_failed"].name == "NVML_ERROR_NOT_SUPPORTED"
    assert "replay" not in gpu.nvlinks[5].errors


def test_no_readable_nvlink_counter_is_a_warning_not_a_pass(library, tmp_path):
    snap = library("h100-sxm-565.txt", legacy_nvlink_counters=False, nvlink_fields=False)
    assert all(not link.counters for link in snap.gpus[0].nvlinks)
    assert _judge("gpu.nvlink", snap, tmp_path) == [
        (
            Status.WARN,
            "gpu0",
            "18 NVLinks active; no NVLink error counter readable (NVML_ERROR_NOT_SUPPORTED)",
        )
    ]
    assert _judge("gpu.nvlink", library("h100-sxm-565.txt"), tmp_path) == []


def test_driver_without_the_recovery_field_is_an_error_kept_as_data(library):
    gpu = library("a100-sxm4-40gb-535.txt").gpus[0]
    assert gpu.recovery_action is None
    assert gpu.errors["recovery_action"].name == "NVML_ERROR_NOT_SUPPORTED"
    assert gpu.minor_number == 2 and gpu.persistence_mode is False


def test_geforce_without_ecc_and_mig_reports_not_supported(library):
    gpu = library("rtx4090-550.txt").gpus[0]
    assert gpu.ecc_mode_current is False and gpu.minor_number == 3 and gpu.index == 0
    for key in ("ecc_uncorrected_volatile", "mig_mode", "fabric"):
        assert gpu.errors[key].name == "NVML_ERROR_NOT_SUPPORTED", key
    assert gpu.pcie_gen_current == 1  # the link idles at gen1


def test_a10g_process_goes_through_the_two_call_size_protocol(library):
    gpu = library("a10g-535.txt").gpus[0]
    assert [(p.pid, p.usedGpuMemory) for p in gpu.processes] == [(3402470, 8716 * MIB)]
    assert gpu.graphics_processes == ()
    assert gpu.ecc_corrected_aggregate == 1 and gpu.ecc_uncorrected_volatile == 0


def test_a_missing_symbol_is_function_not_found_from_pynvml_itself(library, monkeypatch):
    monkeypatch.delattr(SmiLibrary, "nvmlDeviceGetGraphicsRunningProcesses_v3")
    gpu = library("a10g-535.txt").gpus[0]
    # _v3 missing: pynvml raises NVMLError_FunctionNotFound, the adapter tries _v2, missing
    # too; the error is kept with NVML's own code (13). (The unversioned wrapper would raise
    # NVMLLibraryMismatchError, not an NVMLError: the adapter does not call it.)
    assert gpu.graphics_processes is None
    assert gpu.errors["graphics_processes"].name == "NVML_ERROR_FUNCTION_NOT_FOUND"


# --- what the checks make of these GPUs -------------------------------------------------


def _judge(check_id: str, snap: Snapshot, tmp_path: Path, **options: Any) -> list[Any]:
    path = tmp_path / f"{check_id}.json"
    path.write_text(snap.to_json())
    nvml.clear_cache()
    chk = all_checks()[check_id]
    ctx = make_ctx(
        phase="epilog" if check_id == "gpu.idle" else "prolog",
        options=options_of(chk, **options),
        nvml=f"replay:{path}",
        state_dir=tmp_path / "state",
    )
    return [(r.status, r.component, r.message) for r in chk.func(ctx) if r.status != Status.PASS]


def test_checks_on_real_gpus(library, tmp_path):
    a10g = library("a10g-535.txt")
    assert _judge("gpu.pcie", a10g, tmp_path) == [(Status.FAIL, "gpu0", "PCIe x8 (expected x16)")]
    assert _judge("gpu.idle", a10g, tmp_path, settle_s=0) == [
        (Status.FAIL, "gpu0", "1 compute process left after job 812: pid 3402470")
    ]
    rtx = library("rtx4090-550.txt")
    [(status, component, message)] = _judge("gpu.ecc", rtx, tmp_path)
    assert (status, component) == (Status.FAIL, "gpu0") and message.startswith("ECC disabled")
    for name in ("h100-sxm-565.txt", "a100-sxm4-40gb-535.txt"):
        snap = library(name)
        checks = ("gpu.ecc", "gpu.remap", "gpu.pcie", "gpu.idle", "gpu.clocks")
        for check_id in (*checks, "gpu.nvlink") if name.startswith("h100") else checks:
            extra = {"settle_s": 0} if check_id == "gpu.idle" else {}
            assert _judge(check_id, snap, tmp_path, **extra) == [], (name, check_id)


# --- the same comparison against a real GPU ----------------------------------------------


@pytest.mark.gpu
def test_real_nvml_matches_this_machines_nvidia_smi():
    smi = shutil.which("nvidia-smi")
    if smi is None:
        pytest.skip("no nvidia-smi here")
    snap = real.collect()
    if snap.init_error is not None or not snap.device_count:
        pytest.skip(f"NVML unavailable here: {snap.init_error}")
    text = subprocess.run([smi, "-q"], capture_output=True, text=True, timeout=60).stdout
    _, gpus = parse_smi(text)
    for index, gpu in enumerate(gpus):
        want, got = expected(gpu), observed(snap, index)
        # readings that move between the two calls are compared loosely
        for key, slack in (("temperature_c", 3), ("power_usage_mw", 50000)):
            assert abs(want.pop(key) - got.pop(key)) <= slack, key
        want.pop("pids"), got.pop("pids")
        assert got == want


def test_the_bindings_under_test_are_the_release_asked_for():
    """`make test-nvml-matrix` puts one release first on sys.path: make sure it is the one
    imported, not the virtualenv's."""
    import importlib.metadata
    import os

    wanted = os.environ.get("NODECHECK_EXPECT_NVML_PY")
    if not wanted:
        pytest.skip("not run by make test-nvml-matrix")
    assert importlib.metadata.version("nvidia-ml-py") == wanted
    assert Path(pynvml.__file__).parent.name == wanted
