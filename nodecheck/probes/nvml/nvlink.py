"""Every NVLink of one GPU for the collector: state, then the error counters of active links.

Which links: NVML_FI_DEV_NVLINK_LINK_COUNT when the driver gives it (what NCCL's topology
detection does), otherwise every link number up to model.NVLINK_MAX_LINKS; a number the part
does not have answers NOT_SUPPORTED or INVALID_ARGUMENT and is left out.

Which counters (model.NVLINK_COUNTER_SPECS): the legacy nvmlDeviceGetNvLinkErrorCounter on
every part that has it (five calls per link, as before); where none of them is supported
(Blackwell has none) one nvmlDeviceGetFieldValues per link asks the per-link fields instead,
with NVLink5's per-link bit error rates (model.NVLINK_BER_FIELDS).
A counter no source could read keeps its last error; gpu.nvlink WARNs when a GPU has no
counter at all.
"""

from __future__ import annotations

from typing import Any

from nodecheck.probes.nvml import fields
from nodecheck.probes.nvml.caller import Caller
from nodecheck.probes.nvml.model import (
    FI_NVLINK_LINK_COUNT,
    FUNCTION_NOT_FOUND,
    NOT_SUPPORTED,
    NVLINK_BER_FIELDS,
    NVLINK_COUNTER_SPECS,
    NVLINK_MAX_LINKS,
    NvLink,
    NvmlError,
)

# Link numbers NVML answers with one of these are not there on this part.
_NO_SUCH_LINK = (NOT_SUPPORTED, 2, FUNCTION_NOT_FOUND)  # 2: NVML_ERROR_INVALID_ARGUMENT


def collect(call: Caller, handle: Any, where: str) -> tuple[tuple[NvLink, ...], NvmlError | None]:
    """Every link NVML knows on this GPU; (), error when there are none or the GPU is gone."""
    links: list[NvLink] = []
    first_error: NvmlError | None = None
    for link in range(_link_count(call, handle, where) or NVLINK_MAX_LINKS):
        here = f"{where} link{link}"
        state, err = call("nvmlDeviceGetNvLinkState", handle, link, where=here)
        if err is not None:
            first_error = first_error or err
            if err.gpu_lost:
                break
            if err.code not in _NO_SUCH_LINK:
                links.append(NvLink(link=link, active=None, errors={"state": err}))
            continue
        counters: dict[str, int] = {}
        errors: dict[str, NvmlError] = {}
        ber: dict[str, int] = {}
        if state:
            counters, errors, ber = _counters(call, handle, link, here)
        links.append(
            NvLink(link=link, active=bool(state), counters=counters, errors=errors, ber=ber)
        )
    if links:
        return tuple(links), None
    return (), first_error or NvmlError(NOT_SUPPORTED)


def _link_count(call: Caller, handle: Any, where: str) -> int | None:
    """NVML_FI_DEV_NVLINK_LINK_COUNT, or None. Only a bound on the link numbers asked: its
    failure is not kept as an error (every link number is then asked, as before)."""
    answers, err = fields.read(call, handle, [FI_NVLINK_LINK_COUNT], where)
    if err is not None or not answers or answers[0][1] is not None:
        return None
    count = answers[0][0]
    return count if count and 0 < count <= NVLINK_MAX_LINKS else None


def _counters(
    call: Caller, handle: Any, link: int, where: str
) -> tuple[dict[str, int], dict[str, NvmlError], dict[str, int]]:
    counters: dict[str, int] = {}
    errors: dict[str, NvmlError] = {}
    for spec in NVLINK_COUNTER_SPECS:
        if spec.legacy is None:
            continue
        value, err = call(
            "nvmlDeviceGetNvLinkErrorCounter",
            handle,
            link,
            spec.legacy,
            where=f"{where} {spec.name}",
        )
        if err is not None:
            errors[spec.name] = err
        else:
            counters[spec.name] = int(value)
    if counters or not any(err.not_supported for err in errors.values()):
        # The legacy call answers (Hopper and older; some drivers refuse a DL counter or
        # two there, the others are enough), or failed for a reason fields would share.
        return counters, errors, {}
    wanted = [spec for spec in NVLINK_COUNTER_SPECS if spec.field and spec.name not in counters]
    # NVLink5's BER fields in the same call; a part without them answers NOT_SUPPORTED,
    # which is no error (no BER is kept, the counters still are).
    requests = [(spec.field, link) for spec in wanted]
    requests += [(number, link) for number in NVLINK_BER_FIELDS.values()]
    answers, err = fields.read(call, handle, requests, where)
    for index, spec in enumerate(wanted):
        value, field_err = answers[index] if index < len(answers) else (None, err)
        if value is not None:
            counters[spec.name] = value
            errors.pop(spec.name, None)
        elif field_err is not None:
            errors[spec.name] = field_err
    ber = {
        name: value
        for name, (value, _) in zip(NVLINK_BER_FIELDS, answers[len(wanted) :], strict=False)
        if value is not None
    }
    return counters, errors, ber
