"""Collect a Snapshot from the real NVML through pynvml. The only module importing pynvml.

pynvml is imported inside `collect`, never at import time, so nodecheck starts fast and
works on nodes without it. Every NVML call is preceded by a progress note (`note`), so a
call that hangs (a GPU falling off the bus often looks like that) is named when the probe
is killed at its deadline. Every NVML error is kept as data with its real return code.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nodecheck.probes.nvml import fields, nvlink
from nodecheck.probes.nvml.caller import Caller
from nodecheck.probes.nvml.model import (
    ARGUMENT_VERSION_MISMATCH,
    FI_C2C_LINK_COUNT,
    FI_C2C_LINK_STATUS,
    FI_GPU_RECOVERY_ACTION,
    FUNCTION_NOT_FOUND,
    PERF_POLICY_POWER,
    PERF_POLICY_THERMAL,
    FabricInfo,
    Gpu,
    MemoryInfo,
    NvmlError,
    ProcessInfo,
    RemappedRows,
    Snapshot,
    ViolationTime,
)

_MISSING = object()
# The versioned fabric-info structs, newest first, by every name a pynvml release gives them:
# 13.580 on name c_nvmlGpuFabricInfo_v3_t and _v2_t; 12.550 to 12.575 have only the v2 struct,
# named c_nvmlGpuFabricInfoV_t (13.x keeps that name as an alias of _v2_t). Without the last
# name an older pynvml fell back to the unversioned call and lost healthMask.
_FABRIC_STRUCTS = ("c_nvmlGpuFabricInfo_v3_t", "c_nvmlGpuFabricInfo_v2_t", "c_nvmlGpuFabricInfoV_t")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class PlainRead:
    """A Gpu field that one pynvml call on the device handle gives as it is (or through
    `conv`): `calls` newest name first, an older one tried only where a newer is missing;
    `args` follow the handle. Such a field is one row of PLAIN_READS, and the fake pynvml
    of the tests (tests/unit/test_gpu_adapter.py) answers every row from a snapshot."""

    field: str
    calls: tuple[str, ...]
    args: tuple[Any, ...] = ()
    conv: Callable[[Any], Any] = _same


PLAIN_READS: tuple[PlainRead, ...] = (
    PlainRead("pcie_gen_current", ("nvmlDeviceGetCurrPcieLinkGeneration",)),
    PlainRead("pcie_gen_max", ("nvmlDeviceGetMaxPcieLinkGeneration",)),
    PlainRead("pcie_width_current", ("nvmlDeviceGetCurrPcieLinkWidth",)),
    PlainRead("pcie_width_max", ("nvmlDeviceGetMaxPcieLinkWidth",)),
    PlainRead(
        "clocks_event_reasons",
        ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"),
    ),
    # NVML_TEMPERATURE_GPU; the V form is newer, the plain one deprecated but everywhere.
    PlainRead("temperature_c", ("nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature"), (0,)),
    PlainRead("power_usage_mw", ("nvmlDeviceGetPowerUsage",)),
    PlainRead("power_limit_mw", ("nvmlDeviceGetEnforcedPowerLimit",)),
    PlainRead("persistence_mode", ("nvmlDeviceGetPersistenceMode",), conv=bool),
    PlainRead("compute_mode", ("nvmlDeviceGetComputeMode",)),
)


def collect(indices: Iterable[int] | None = None, source: str = "real") -> Snapshot:
    """Take one snapshot of every GPU (or of `indices` only) through the real NVML."""
    started, wall = time.monotonic(), time.time()
    try:
        import pynvml
    except ImportError:
        # No bindings at all is the same situation as no libnvidia-ml.so for the checks.
        return Snapshot(
            source=source,
            collected_at=wall,
            init_error=NvmlError(12, message="pynvml (nvidia-ml-py) not installed"),
        )
    call = Caller(pynvml)
    _, init_error = call("nvmlInit")
    if init_error is not None:
        return Snapshot(
            source=source,
            collected_at=wall,
            collect_s=time.monotonic() - started,
            init_error=init_error,
        )
    try:
        errors: dict[str, NvmlError] = {}
        driver, err = call("nvmlSystemGetDriverVersion")
        if err:
            errors["driver_version"] = err
        cuda, err = call("nvmlSystemGetCudaDriverVersion")
        if err:
            errors["cuda_driver_version"] = err
        count, err = call("nvmlDeviceGetCount")
        if err:
            errors["device_count"] = err
        wanted = sorted(set(indices)) if indices is not None else list(range(count or 0))
        gpus = tuple(_collect_gpu(call, pynvml, i) for i in wanted if count and i < count)
        return Snapshot(
            source=source,
            collected_at=wall,
            collect_s=time.monotonic() - started,
            driver_version=_text(driver) if driver is not None else None,
            cuda_driver_version=cuda,
            device_count=count,
            gpus=gpus,
            errors=errors,
            selected=tuple(wanted) if indices is not None else None,
        )
    finally:
        call("nvmlShutdown")


def _collect_gpu(call: Caller, nv: Any, index: int) -> Gpu:
    where = f"gpu{index}"
    handle, err = call("nvmlDeviceGetHandleByIndex", index, where=where)
    if err is not None:
        return Gpu(index=index, errors={"handle": err})
    values: dict[str, Any] = {"index": index}
    errors: dict[str, NvmlError] = {}

    def get(key: str, fn_name: str | tuple[str, ...], *args: Any, conv: Callable = lambda v: v):
        names = (fn_name,) if isinstance(fn_name, str) else fn_name
        value, err = call.first(names, handle, *args, where=where)
        if err is not None:
            errors[key] = err
            return _MISSING
        values[key] = conv(value)
        return values[key]

    get("minor_number", "nvmlDeviceGetMinorNumber")
    get("name", "nvmlDeviceGetName", conv=_text)
    get("uuid", "nvmlDeviceGetUUID", conv=_text)
    pci = get("pci_bus_id", "nvmlDeviceGetPciInfo", conv=lambda p: _text(p.busId))
    if pci is not _MISSING and values["pci_bus_id"] == "":
        values["pci_bus_id"] = None

    value, err = call("nvmlDeviceGetEccMode", handle, where=where)
    if err is not None:
        errors["ecc_mode"] = err
    else:
        values["ecc_mode_current"], values["ecc_mode_pending"] = (bool(v) for v in value)
    for kind, error_type in (("uncorrected", 1), ("corrected", 0)):
        for counter, counter_type in (("volatile", 0), ("aggregate", 1)):
            get(f"ecc_{kind}_{counter}", "nvmlDeviceGetTotalEccErrors", error_type, counter_type)

    value, err = call("nvmlDeviceGetRemappedRows", handle, where=where)
    if err is not None:
        errors["remapped_rows"] = err
    else:
        corr, unc, pending, failure = value
        values["remapped_rows"] = RemappedRows(int(corr), int(unc), bool(pending), bool(failure))
    if "remapped_rows" in errors and errors["remapped_rows"].not_supported:
        # Parts before Ampere retire whole pages instead of remapping rows.
        get("retired_pages_pending", "nvmlDeviceGetRetiredPagesPendingStatus", conv=bool)
        sbe_cause, dbe_cause = 0, 1  # NVML_PAGE_RETIREMENT_CAUSE_{MULTIPLE_SINGLE_BIT,DOUBLE_BIT}
        get("retired_pages_sbe", "nvmlDeviceGetRetiredPages", sbe_cause, conv=len)
        get("retired_pages_dbe", "nvmlDeviceGetRetiredPages", dbe_cause, conv=len)

    for read in PLAIN_READS:
        get(read.field, read.calls, *read.args, conv=read.conv)
    # Cumulative time below application clocks per policy: the share of time throttled
    # between two runs (trend.gpu_clocks), which the clock event reasons only sample.
    for key, policy in (
        ("power_violation", PERF_POLICY_POWER),
        ("thermal_violation", PERF_POLICY_THERMAL),
    ):
        get(key, "nvmlDeviceGetViolationStatus", policy, conv=_violation)

    values["nvlinks"], nvlink_error = nvlink.collect(call, handle, where)
    if nvlink_error is not None:
        errors["nvlink"] = nvlink_error

    value, err = call("nvmlDeviceGetMigMode", handle, where=where)
    if err is not None:
        errors["mig_mode"] = err
    else:
        values["mig_mode_current"], values["mig_mode_pending"] = (bool(v) for v in value)

    fabric, err = _collect_fabric(call, nv, handle, where)
    if err is not None:
        errors["fabric"] = err
    else:
        values["fabric"] = fabric

    for key, kind in (("processes", "Compute"), ("graphics_processes", "Graphics")):
        names = tuple(f"nvmlDeviceGet{kind}RunningProcesses{v}" for v in ("_v3", "_v2"))
        get(key, names, conv=_processes)
    get(
        "memory",
        "nvmlDeviceGetMemoryInfo",
        conv=lambda m: MemoryInfo(total=int(m.total), free=int(m.free), used=int(m.used)),
    )
    action, err = _recovery_action(call, handle, where)
    if err is not None:
        errors["recovery_action"] = err
    else:
        values["recovery_action"] = action
    c2c, err = _c2c_links(call, handle, where)
    if err is not None:
        errors["c2c"] = err
    else:
        values["c2c_links"] = c2c
    return Gpu(**values, errors=errors)


def _c2c_links(call: Caller, handle: Any, where: str) -> tuple[tuple[int, ...] | None, Any]:
    """NVLink-C2C (Grace parts): the link count, then every link's status in one call, as
    NCCL reads them. A GPU without C2C answers the count NOT_SUPPORTED (kept as the error)."""
    answers, err = fields.read(call, handle, [FI_C2C_LINK_COUNT], where)
    if err is not None:
        return None, err
    count, err = answers[0]
    if err is not None or not count:
        return (None, err) if err is not None else ((), None)
    answers, err = fields.read(
        call, handle, [(FI_C2C_LINK_STATUS, link) for link in range(int(count))], where
    )
    if err is not None:
        return None, err
    first = next((e for _, e in answers if e is not None), None)
    if first is not None:
        return None, first
    return tuple(int(v or 0) for v, _ in answers), None


def _domain(info: Any) -> dict[str, Any]:
    """clusterUuid and cliqueId of a fabric-info struct; both None without a domain (an
    all-zero UUID): a clique number means nothing outside one."""
    uuid = _uuid_text(getattr(info, "clusterUuid", None))
    clique = int(getattr(info, "cliqueId", 0)) if uuid is not None else None
    return {"clusterUuid": uuid, "cliqueId": clique}


def _uuid_text(raw: Any) -> str | None:
    """NVML's clusterUuid (16 unsigned chars) as a UUID string; None when all zero (no
    multi-node NVLink domain: an HGX H100 reports zeros with state COMPLETED)."""
    data = bytes(int(b) & 0xFF for b in raw)[:16] if raw is not None else b""
    if len(data) != 16 or not any(data):
        return None
    text = data.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _violation(value: Any) -> ViolationTime | None:
    # None: no struct at all (the replay fake's answer for a snapshot recorded without it).
    if value is None:
        return None
    return ViolationTime(int(value.referenceTime), int(value.violationTime))


def _processes(procs: Iterable[Any]) -> tuple[ProcessInfo, ...]:
    return tuple(ProcessInfo(pid=int(p.pid), usedGpuMemory=p.usedGpuMemory) for p in procs)


def _recovery_action(call: Caller, handle: Any, where: str) -> tuple[int | None, NvmlError | None]:
    """NVML_FI_DEV_GET_GPU_RECOVERY_ACTION through nvmlDeviceGetFieldValues: the call can
    succeed while the field itself fails (its own nvmlReturn), e.g. on drivers before R565.
    Asked by number: pynvml releases before 12.570 lack the name, not the driver."""
    answers, err = fields.read(call, handle, [FI_GPU_RECOVERY_ACTION], where)
    if err is not None:
        return None, err
    return answers[0]


def _collect_fabric(
    call: Caller, nv: Any, handle: Any, where: str
) -> tuple[FabricInfo | None, NvmlError | None]:
    """GPU fabric registration (NVSwitch systems): newest struct the driver accepts."""
    tried: list[Any] = []
    for struct_name in _FABRIC_STRUCTS:
        struct_type = getattr(nv, struct_name, None)
        if struct_type is None or struct_type in tried:
            continue
        tried.append(struct_type)
        info = struct_type()
        _, err = call("nvmlDeviceGetGpuFabricInfoV", handle, ctypes.byref(info), where=where)
        if err is None:
            return (
                FabricInfo(
                    state=int(info.state),
                    status=int(info.status),
                    healthMask=int(info.healthMask),
                    healthSummary=int(getattr(info, "healthSummary", 0)) or None,
                    **_domain(info),
                ),
                None,
            )
        if err.code not in (ARGUMENT_VERSION_MISMATCH, FUNCTION_NOT_FOUND):
            return None, err
    struct_type = getattr(nv, "c_nvmlGpuFabricInfo_t", None)
    if struct_type is None:
        return None, NvmlError(FUNCTION_NOT_FOUND)
    info = struct_type()
    _, err = call("nvmlDeviceGetGpuFabricInfo", handle, ctypes.byref(info), where=where)
    if err is not None:
        return None, err
    return (
        FabricInfo(
            state=int(info.state),
            status=int(info.status),
            **_domain(info),
        ),
        None,
    )
