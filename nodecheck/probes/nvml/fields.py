"""nvmlDeviceGetFieldValues for the collector: several fields in one call, each with its own
nvmlReturn. Used by real.py (the recovery action) and nvlink.py (link count, NVLink counters).

Field ids are passed as numbers (model.FI_*), not looked up in pynvml: they are ABI constants,
so a pynvml older than a field still reads it from a driver that has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nodecheck.probes.nvml.caller import Caller
from nodecheck.probes.nvml.model import NvmlError

# nvmlValueType_t -> the member of the nvmlValue_t union that holds it (nvml.h).
_VALUE_MEMBERS = dict(enumerate(("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")))

FieldAnswer = tuple[int | None, NvmlError | None]


def read(
    call: Caller, handle: Any, requests: Sequence[int | tuple[int, int]], where: str
) -> tuple[list[FieldAnswer], NvmlError | None]:
    """One nvmlDeviceGetFieldValues call for `requests` (a field id, or (field id, scopeId)):
    the value or the field's own error for each, or the call's error. The call can succeed
    while a field fails (e.g. a field newer than the driver: NOT_SUPPORTED in that field)."""
    values, err = call("nvmlDeviceGetFieldValues", handle, list(requests), where=where)
    if err is not None:
        return [], err
    answers: list[FieldAnswer] = []
    for slot in values:
        if int(slot.nvmlReturn) != 0:
            answers.append((None, NvmlError(int(slot.nvmlReturn))))
            continue
        member = _VALUE_MEMBERS.get(int(slot.valueType), "ullVal")
        answers.append((int(getattr(slot.value, member)), None))
    return answers, None
