"""Plain-data NVML snapshot: what the gpu.* checks read, and what replay files contain.

Every value is what NVML returns, in NVML's units (power in milliwatts, temperatures in
degrees Celsius, memory in bytes, PCI bus ids as `00000000:18:00.0`). Sub-records that
mirror an NVML struct keep NVML's member names (`corrRows`, `usedGpuMemory`, ...).

A value NVML refused to give is `None`, and the refusal is kept as data in the owner's
`errors` mapping under the field's name, with NVML's real return code. This module
does not import pynvml: replay and the checks must work where it is missing.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

FORMAT = "nodecheck-nvml-snapshot/1"
T = TypeVar("T")

# nvmlReturn_t codes and the text nvmlErrorString/pynvml gives them (nvml.h, pynvml).
ERROR_CODES: dict[int, tuple[str, str]] = {
    1: ("NVML_ERROR_UNINITIALIZED", "Uninitialized"),
    2: ("NVML_ERROR_INVALID_ARGUMENT", "Invalid Argument"),
    3: ("NVML_ERROR_NOT_SUPPORTED", "Not Supported"),
    4: ("NVML_ERROR_NO_PERMISSION", "Insufficient Permissions"),
    5: ("NVML_ERROR_ALREADY_INITIALIZED", "Already Initialized"),
    6: ("NVML_ERROR_NOT_FOUND", "Not Found"),
    7: ("NVML_ERROR_INSUFFICIENT_SIZE", "Insufficient Size"),
    8: ("NVML_ERROR_INSUFFICIENT_POWER", "Insufficient External Power"),
    9: ("NVML_ERROR_DRIVER_NOT_LOADED", "Driver Not Loaded"),
    10: ("NVML_ERROR_TIMEOUT", "Timeout"),
    11: ("NVML_ERROR_IRQ_ISSUE", "Interrupt Request Issue"),
    12: ("NVML_ERROR_LIBRARY_NOT_FOUND", "NVML Shared Library Not Found"),
    13: ("NVML_ERROR_FUNCTION_NOT_FOUND", "Function Not Found"),
    14: ("NVML_ERROR_CORRUPTED_INFOROM", "Corrupted infoROM"),
    15: ("NVML_ERROR_GPU_IS_LOST", "GPU is lost"),
    16: ("NVML_ERROR_RESET_REQUIRED", "GPU requires restart"),
    17: ("NVML_ERROR_OPERATING_SYSTEM", "The operating system has blocked the request."),
    18: ("NVML_ERROR_LIB_RM_VERSION_MISMATCH", "RM has detected an NVML/RM version mismatch."),
    19: ("NVML_ERROR_IN_USE", "In Use"),
    20: ("NVML_ERROR_MEMORY", "Insufficient Memory"),
    21: ("NVML_ERROR_NO_DATA", "No Data"),
    22: ("NVML_ERROR_VGPU_ECC_NOT_SUPPORTED", "vGPU ECC Not Supported"),
    23: ("NVML_ERROR_INSUFFICIENT_RESOURCES", "Insufficient Resources"),
    24: ("NVML_ERROR_FREQ_NOT_SUPPORTED", "Frequency Not Supported"),
    25: ("NVML_ERROR_ARGUMENT_VERSION_MISMATCH", "Argument Version Mismatch"),
    26: ("NVML_ERROR_DEPRECATED", "Deprecated"),
    27: ("NVML_ERROR_NOT_READY", "Not Ready"),
    28: ("NVML_ERROR_GPU_NOT_FOUND", "GPU Not Found"),
    29: ("NVML_ERROR_INVALID_STATE", "Invalid State"),
    30: ("NVML_ERROR_RESET_TYPE_NOT_SUPPORTED", "Reset Type Not Supported"),
    999: ("NVML_ERROR_UNKNOWN", "Unknown Error"),
}
NOT_SUPPORTED = 3
NO_PERMISSION = 4
DRIVER_NOT_LOADED = 9
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
RESET_REQUIRED = 16
LIB_RM_VERSION_MISMATCH = 18
ARGUMENT_VERSION_MISMATCH = 25
UNKNOWN = 999

# nvmlClocksEventReason* bits (nvml.h); the older nvmlClocksThrottleReason* have the same values.
CLOCK_EVENT_REASONS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}

# nvmlPerfPolicyType_t (nvml.h): the policies nvmlDeviceGetViolationStatus keeps a time for
# ("how long did power/thermal violations cause the GPU to be below application clocks").
# POWER includes running capped at the enforced power limit (what the SW power cap reason
# reports); THERMAL is the slowdowns a hot GPU takes.
PERF_POLICY_POWER = 0
PERF_POLICY_THERMAL = 1

# nvmlGpuFabricState_t
FABRIC_STATES = {0: "not supported", 1: "not started", 2: "in progress", 3: "completed"}
FABRIC_STATE_NOT_SUPPORTED = 0
FABRIC_STATE_COMPLETED = 3
# healthSummary (nvmlGpuFabricInfo_v3)
FABRIC_HEALTH = {0: "not supported", 1: "healthy", 2: "unhealthy", 3: "limited capacity"}

# nvmlComputeMode_t
COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}

# nvmlNvLinkErrorCounter_t, in order: NVML_NVLINK_ERROR_DL_REPLAY .. DL_ECC_DATA: what
# nvmlDeviceGetNvLinkErrorCounter reads (none of it on Blackwell: NVML change log, "Changes
# between v560 and v565", removed it there).
NVLINK_COUNTERS = ("replay", "recovery", "crc_flit", "crc_data", "ecc_data")

# nvmlDeviceGetFieldValues field ids (nvml.h; ABI numbers, the same in every release, so they
# are used even where an older pynvml lacks the name).
FI_NVLINK_LINK_COUNT = 91  # NVML_FI_DEV_NVLINK_LINK_COUNT: "Number of NVLinks present"
FI_GPU_RECOVERY_ACTION = 230  # NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (R565 on)
# NVLink-C2C, the Grace CPU <-> GPU link of GH200/GB200/GB300 (nvml.h, change log v515-v520):
# the link count, then per link (scopeId) its status, 0 INACTIVE 1 ACTIVE. NCCL and UCX read
# them the same way to decide whether host memory is behind C2C.
FI_C2C_LINK_COUNT = 170  # NVML_FI_DEV_C2C_LINK_COUNT
FI_C2C_LINK_STATUS = 171  # NVML_FI_DEV_C2C_LINK_GET_STATUS
# nvml.h's NVML_NVLINK_MAX_LINKS is 18 up to R580 and 36 from R590 (NVML change log, "Changes
# between v580 and v590", "for more NvLinks in Rubin"); pynvml follows its release. The
# collector asks up to the newest header's number whatever pynvml says, so a snapshot does not
# depend on the bindings' release; links a part does not have answer INVALID_ARGUMENT.
NVLINK_MAX_LINKS = 36


@dataclass(frozen=True)
class NvLinkCounter:
    """One NVLink error counter (a count of events since the driver loaded) and where NVML
    keeps it.

    `legacy` is its nvmlNvLinkErrorCounter_t (nvmlDeviceGetNvLinkErrorCounter), `field` the
    per-link field id (nvmlDeviceGetFieldValues, scopeId = the link) read where the legacy
    call is not supported. What a rise means (allowance, report-only) is gpu.nvlink's,
    keyed by `name`: nodecheck/checks/gpu/links.py."""

    name: str
    legacy: int | None
    field: int | None


# Hopper and older: the five legacy counters (161-163 replaced the per-lane fields on Hopper:
# change log v520-v525). Blackwell: the NVLink5 counters 201-222 (change log v565-v570;
# DCGM_FI_DEV_NVLINK_COUNT_* read them on GB200, NVIDIA/dcgm-exporter issue #581). The change
# log says 161-163 are not supported on Blackwell either, yet `nvidia-smi nvlink -e` prints
# replay/recovery/CRC counts on a GB300 (NVIDIA/srt-slurm pull request #307): they are asked
# too, and whatever answers is compared. Adding a counter is one row here and its allowance
# in gpu.nvlink (checks/gpu/links.py; a test holds the two lists equal).
NVLINK_COUNTER_SPECS: tuple[NvLinkCounter, ...] = (
    NvLinkCounter("replay", 0, 161),  # NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY
    NvLinkCounter("recovery", 1, 162),  # NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY
    NvLinkCounter("crc_flit", 2, 163),  # NVML_FI_DEV_NVLINK_ERROR_DL_CRC
    NvLinkCounter("crc_data", 3, None),
    NvLinkCounter("ecc_data", 4, None),
    # NVLink5 (Blackwell): NVML_FI_DEV_NVLINK_COUNT_*
    NvLinkCounter("rx_errors", None, 208),  # RCV_ERRORS
    NvLinkCounter("local_link_integrity", None, 211),
    NvLinkCounter("link_recovery_failed", None, 214),
    NvLinkCounter("link_recovery", None, 215),  # LINK_RECOVERY_EVENTS
    NvLinkCounter("effective_errors", None, 219),  # after FEC
    NvLinkCounter("symbol_errors", None, 221),  # FEC corrects these
)
NVLINK_COUNTER_BY_NAME = {spec.name: spec for spec in NVLINK_COUNTER_SPECS}
# NVLink5's per-link bit error rates, read with its counters (field values, scopeId = link):
# NVML_FI_DEV_NVLINK_COUNT_EFFECTIVE_BER (220: after FEC, "Effective BER for effective
# errors", change log v565-v570) and NVML_FI_DEV_NVLINK_COUNT_SYMBOL_BER (222: the symbol
# errors FEC corrects). Values are packed: decode_ber.
NVLINK_BER_FIELDS: dict[str, int] = {"effective": 220, "symbol": 222}
# The packing (nvml.h NVML_NVLINK_BER_MANTISSA_SHIFT 8 / _WIDTH 0xf, NVML_NVLINK_BER_EXP_SHIFT
# 0 / _WIDTH 0xff, read through NVML_NVLINK_ERROR_COUNTER_BER_GET): BER = mantissa x
# 10^-exponent, as NVIDIA/DCGM's NvmlBerParser (common/DcgmUtilities.cpp) decodes it.
BER_MANTISSA_SHIFT, BER_MANTISSA_MASK = 8, 0xF
BER_EXP_SHIFT, BER_EXP_MASK = 0, 0xFF


def decode_ber(raw: int) -> float:
    """An NVLink5 BER field's value as a rate: 0x401 (mantissa 4, exponent 1) is 0.4, the
    floor 0xFFF is 1.5e-254 (what a link with no error reports, per DCGM)."""
    mantissa = (raw >> BER_MANTISSA_SHIFT) & BER_MANTISSA_MASK
    exponent = (raw >> BER_EXP_SHIFT) & BER_EXP_MASK
    return mantissa * 10.0**-exponent


# NVLink5's counters: read through field values only, no legacy call.
NVLINK5_COUNTERS = tuple(
    spec.name for spec in NVLINK_COUNTER_SPECS if spec.legacy is None and spec.field is not None
)


@dataclass(frozen=True)
class NvmlError:
    """One NVML call's failure: the nvmlReturn_t code and its names."""

    code: int
    name: str = ""
    message: str = ""

    def __post_init__(self) -> None:
        name, message = ERROR_CODES.get(self.code, (f"NVML_ERROR_{self.code}", ""))
        if not self.name:
            object.__setattr__(self, "name", name)
        if not self.message:
            object.__setattr__(self, "message", message or f"NVML error {self.code}")

    @property
    def not_supported(self) -> bool:
        return self.code in (NOT_SUPPORTED, FUNCTION_NOT_FOUND)

    @property
    def gpu_lost(self) -> bool:
        return self.code == GPU_IS_LOST

    @property
    def absent(self) -> bool:
        """NVML is simply not there: no driver or no libnvidia-ml.so on this node."""
        return self.code in (LIBRARY_NOT_FOUND, DRIVER_NOT_LOADED)

    def __str__(self) -> str:
        return f"{self.message} ({self.name})"


@dataclass(frozen=True)
class RemappedRows:
    """nvmlDeviceGetRemappedRows (Ampere and later)."""

    corrRows: int
    uncRows: int
    isPending: bool
    failureOccurred: bool


@dataclass(frozen=True)
class NvLink:
    """One NVLink: nvmlDeviceGetNvLinkState and its error counters (the legacy call or the
    per-link field values); a counter no source could read has its last error."""

    link: int
    active: bool | None = None
    counters: Mapping[str, int] = field(default_factory=dict)  # NVLINK_COUNTER_SPECS names
    errors: Mapping[str, NvmlError] = field(default_factory=dict)  # "state" or a counter
    # NVLINK_BER_FIELDS name -> NVML's packed value (decode_ber); NVLink5 only, not an error
    # where absent (every other part has none).
    ber: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FabricInfo:
    """nvmlDeviceGetGpuFabricInfo(V): state is nvmlGpuFabricState_t, status an nvmlReturn_t.
    clusterUuid (NVML's 16 bytes as a UUID string; None when all zero, as an H100 without a
    multi-node NVLink domain reports it) and cliqueId name the NVLink domain and partition
    the GPU registered in (GB200/GB300 NVL72: every GPU of a rack shares them)."""

    state: int
    status: int
    healthMask: int | None = None
    healthSummary: int | None = None
    clusterUuid: str | None = None
    cliqueId: int | None = None


@dataclass(frozen=True)
class ViolationTime:
    """nvmlDeviceGetViolationStatus (nvmlViolationTime_t): violationTime, the ns a policy
    held the GPU below its application clocks since the driver loaded, and referenceTime,
    the CPU timestamp (us) it was read at. Two readings give the share of the time between
    them throttled: d(violationTime) / (1000 x d(referenceTime))."""

    referenceTime: int
    violationTime: int


@dataclass(frozen=True)
class ProcessInfo:
    """One entry of nvmlDeviceGet{Compute,Graphics}RunningProcesses (bytes; None when
    unavailable)."""

    pid: int
    usedGpuMemory: int | None = None


@dataclass(frozen=True)
class MemoryInfo:
    """nvmlDeviceGetMemoryInfo, bytes."""

    total: int
    free: int
    used: int


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML reported it; a field NVML could not give is None (see errors)."""

    index: int
    minor_number: int | None = None
    name: str | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    ecc_mode_current: bool | None = None
    ecc_mode_pending: bool | None = None
    # nvmlDeviceGetTotalEccErrors(MEMORY_ERROR_TYPE_(UN)CORRECTED, VOLATILE/AGGREGATE_ECC)
    ecc_uncorrected_volatile: int | None = None
    ecc_uncorrected_aggregate: int | None = None
    ecc_corrected_volatile: int | None = None
    ecc_corrected_aggregate: int | None = None
    remapped_rows: RemappedRows | None = None
    # nvmlDeviceGetRetiredPagesPendingStatus / len(nvmlDeviceGetRetiredPages(cause))
    retired_pages_pending: bool | None = None
    retired_pages_sbe: int | None = None
    retired_pages_dbe: int | None = None
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    nvlinks: tuple[NvLink, ...] = ()
    clocks_event_reasons: int | None = None  # bitmask, CLOCK_EVENT_REASONS
    # nvmlDeviceGetViolationStatus(NVML_PERF_POLICY_POWER / NVML_PERF_POLICY_THERMAL)
    power_violation: ViolationTime | None = None
    thermal_violation: ViolationTime | None = None
    temperature_c: int | None = None
    power_usage_mw: int | None = None
    power_limit_mw: int | None = None  # nvmlDeviceGetEnforcedPowerLimit
    persistence_mode: bool | None = None
    mig_mode_current: bool | None = None
    mig_mode_pending: bool | None = None
    compute_mode: int | None = None  # COMPUTE_MODES
    fabric: FabricInfo | None = None
    processes: tuple[ProcessInfo, ...] | None = None
    graphics_processes: tuple[ProcessInfo, ...] | None = None
    memory: MemoryInfo | None = None
    # nvmlDeviceGpuRecoveryAction_t; its meaning depends on the driver branch:
    # nodecheck/probes/recovery_action.py
    recovery_action: int | None = None
    # NVLink-C2C (Grace parts): each link's status (FI_C2C_LINK_STATUS: 1 active, 0 not);
    # None where NVML has none (errors["c2c"]: NOT_SUPPORTED on every discrete GPU).
    c2c_links: tuple[int, ...] | None = None
    # Field name (or call group: "handle", "ecc_mode", "mig_mode", "nvlink") -> NVML error.
    errors: Mapping[str, NvmlError] = field(default_factory=dict)

    @property
    def component(self) -> str:
        return f"gpu{self.index}"

    def error(self, *keys: str) -> NvmlError | None:
        """The first NVML error recorded for any of `keys`, or for the device handle."""
        for key in (*keys, "handle"):
            if key in self.errors:
                return self.errors[key]
        return None


@dataclass(frozen=True)
class Snapshot:
    """The node's GPUs at one moment, from real NVML or a recorded file."""

    source: str
    collected_at: float = 0.0
    collect_s: float = 0.0
    init_error: NvmlError | None = None
    driver_version: str | None = None
    cuda_driver_version: int | None = None  # e.g. 12040 for CUDA 12.4
    device_count: int | None = None
    gpus: tuple[Gpu, ...] = ()
    # "driver_version", "cuda_driver_version", "device_count" -> NVML error.
    errors: Mapping[str, NvmlError] = field(default_factory=dict)
    # NVML indices collected when restricted to some GPUs (the job's); None: all of them.
    selected: tuple[int, ...] | None = None

    @property
    def available(self) -> bool:
        return self.init_error is None

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **to_plain(self)}

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        fmt = data.get("format", FORMAT)
        if fmt != FORMAT:
            raise ValueError(f"unknown snapshot format {fmt!r} (expected {FORMAT!r})")
        body = {k: v for k, v in data.items() if k not in ("format", "replay", "comment")}
        return from_plain(cls, {"source": "", **body}, "snapshot")

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        return cls.from_json(path.read_text(encoding="utf-8"))


def dumps(data: Any, depth: int = 0) -> str:
    """JSON for snapshot files: one line per field and per NVLink, diff-friendly and small."""
    if depth > 3 or not isinstance(data, dict | list) or not data:
        return json.dumps(data)
    pad = " " * (depth + 1)
    if isinstance(data, dict):
        items = [f"{pad}{json.dumps(k)}: {dumps(v, depth + 1)}" for k, v in data.items()]
        body, ends = ",\n".join(items), "{}"
    else:
        body, ends = ",\n".join(f"{pad}{dumps(v, depth + 1)}" for v in data), "[]"
    text = f"{ends[0]}\n{body}\n{' ' * depth}{ends[1]}"
    return text + "\n" if depth == 0 else text


def to_plain(record: Any) -> dict[str, Any]:
    """A model dataclass as JSON-ready data: every field by name, tuples as lists."""
    return _plain(asdict(record))


def from_plain(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """The model dataclass `cls` from JSON data, walking its fields and their annotations:
    a nested record, a tuple of them, an NVML error or a mapping of them is rebuilt by its
    type, a missing field takes its default, and an unknown key is an error (a misspelt
    field must not vanish silently). A new field needs no code here."""
    readers = field_readers(cls)
    unknown = set(data) - set(readers)
    if unknown:
        raise ValueError(f"{where or cls.__name__}: unknown keys {sorted(unknown)}")
    missing = {f.name for f in fields(cls) if f.init and _required(f)} - set(data)
    if missing:
        raise ValueError(f"{where or cls.__name__}: missing keys {sorted(missing)}")
    return cls(**{k: readers[k](v) for k, v in data.items()})


def _required(spec: Field[Any]) -> bool:
    return spec.default is MISSING and spec.default_factory is MISSING


Reader = Callable[[Any], Any]


@functools.cache
def field_readers(cls: type) -> dict[str, Reader]:
    """For each field of `cls`, what turns its JSON value back into the model's value; made
    once per class from the annotations (resolving them costs more than a whole load). A
    test that swaps a model class for an extended one clears this cache."""
    return {name: _reader(hint) for name, hint in get_type_hints(cls).items()}


def _reader(hint: Any) -> Reader:
    optional = get_origin(hint) in (Union, UnionType)
    if optional:  # `X | None`: the model has no wider unions
        (hint,) = [arg for arg in get_args(hint) if arg is not type(None)]
    origin, args = get_origin(hint), get_args(hint)
    if hint is NvmlError:
        return _error
    if isinstance(hint, type) and is_dataclass(hint):
        record = hint
        return lambda value: None if value is None else from_plain(record, value)
    # A null where the model has no None (nvlinks, counters) is the empty collection.
    empty = None if optional else (() if origin is tuple else {})
    if origin is tuple:
        item = _reader(args[0])
        return lambda value: empty if value is None else tuple(item(v) for v in value)
    if origin in (Mapping, dict) and args[1] is NvmlError:
        return _errors
    if origin in (Mapping, dict):
        item = _reader(args[1])
        return lambda value: empty if value is None else {str(k): item(v) for k, v in value.items()}
    if hint is float:
        return lambda value: None if value is None else float(value)
    return lambda value: value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _error(data: Any) -> NvmlError | None:
    if data is None:
        return None
    if isinstance(data, int):
        return NvmlError(data)
    return NvmlError(int(data["code"]), data.get("name", ""), data.get("message", ""))


def _errors(data: Any) -> dict[str, NvmlError]:
    return {key: err for key, raw in (data or {}).items() if (err := _error(raw)) is not None}
