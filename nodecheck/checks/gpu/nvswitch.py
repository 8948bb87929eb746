"""gpu.fabric: on NVSwitch systems, the fabric manager state and each GPU's fabric registration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodecheck.checks import boundary
from nodecheck.checks.context import CheckContext
from nodecheck.checks.gpu import imex
from nodecheck.checks.registry import Option, check
from nodecheck.core.results import SIGNALS_KEY, CheckResult, Status
from nodecheck.probes.nvml import model as nvml_model

if TYPE_CHECKING:
    from nodecheck.probes.nvml.model import Gpu
from nodecheck.checks.gpu.common import (
    GROUP,
    ONLY_JOB_GPUS,
    TIMEOUT_S,
    _error_result,
    _per_gpu,
    _result,
    _snapshot,
)

# Signals new to GB200/GB300 NVL72 (report-only until the site sets `report_only`): an untested
# signal must not drain a rack (other tools' checks marked whole GB300 racks for replacement).
NEW_SIGNALS = {
    "nvl_registration": "GB200/GB300: fabric registration of a multi-node NVLink domain",
    "nvl_domain": "GB200/GB300: cluster UUID and clique of the NVLink domain",
}
# Parts whose NVLink domain spans nodes (NVL72 racks); their fabric is brokered by the NVLink
# switch trays (NVOS: NMX-C, fabric manager), not by a host nvidia-fabricmanager.
MULTI_NODE_PARTS = ("GB200", "GB300")


@check(
    "gpu.fabric",
    severity="critical",
    remedy="restart-service",
    summary="NVSwitch systems: GPU fabric registration completed; on NVL72 parts the GPUs' "
    "NVLink domain (cluster UUID, clique) as expected",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "required": Option(bool, False, "FAIL when fabric info is not supported (NVSwitch class)"),
        "cluster_uuid": Option(
            str, "", "the NVLink domain's cluster UUID every GPU must report ('' unset)"
        ),
        "clique_id": Option(int, None, "the clique (NVLink partition) every GPU must be in"),
        "topology_file": Option(
            str,
            "",
            "Slurm's topology.conf or topology.yaml: this node's block names its NVLink domain "
            "(read locally, no controller call)",
        ),
        "domains": Option(
            dict, {}, "block name -> the cluster UUID its GPUs must report", item=str
        ),
        **imex.OPTIONS,
        "only_job_gpus": ONLY_JOB_GPUS,
    },
    new_signals={**NEW_SIGNALS, **imex.SIGNAL},
)
def gpu_fabric(ctx: CheckContext) -> Iterator[CheckResult]:
    """On NVSwitch systems (HGX/DGX) a GPU must register with the fabric, brokered by
    nvidia-fabricmanager, before CUDA can use it: until then CUDA init fails or NVLink
    traffic has nowhere to go. Fix: start/restart nvidia-fabricmanager (its version must
    match the driver), check its log; then reset the GPUs or reboot. On GB200/GB300 NVL72
    the host runs no fabric manager: the NVLink switch trays register the GPUs into the
    rack's domain (cluster UUID) and partition (clique); a GPU that is not registered, or
    in another domain or clique than the rest, cannot reach the rack's other GPUs. Fix:
    the rack's NVLink switch trays and NMX-C, the tray's cables; then reset or reboot."""
    cid = "gpu.fabric"
    opts = ctx.options
    required = opts["required"]
    snap = _snapshot(ctx)
    block = _block(ctx) if opts["topology_file"] else None
    want_uuid = opts["cluster_uuid"] or (opts["domains"].get(block or "", "") if block else "")
    majority = _tray_domain(snap.gpus) if snap.available else None

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        err = gpu.errors.get("fabric")
        fabric = gpu.fabric
        unsupported = (err is not None and err.not_supported) or (
            fabric is not None and fabric.state == nvml_model.FABRIC_STATE_NOT_SUPPORTED
        )
        if unsupported:
            if required:
                yield _result(
                    cid, Status.FAIL, "fabric info not supported (NVSwitch expected)", gpu
                )
            else:
                yield _result(
                    cid, Status.SKIP, "not an NVSwitch system (fabric not supported)", gpu
                )
            return
        if err is not None or fabric is None:
            yield _error_result(cid, err or nvml_model.NvmlError(999), "fabric info", gpu)
            return
        state = nvml_model.FABRIC_STATES.get(fabric.state, str(fabric.state))
        values: dict[str, Any] = {
            "state": state,
            "status": nvml_model.NvmlError(fabric.status).name if fabric.status else "NVML_SUCCESS",
            "health_summary": nvml_model.FABRIC_HEALTH.get(fabric.healthSummary or 0),
            "cluster_uuid": fabric.clusterUuid,
            "clique_id": fabric.cliqueId,
        }
        if block is not None:
            values["domain"] = block
        multi = multi_node_part(gpu)
        if multi:  # a judgement nodecheck has not been proven on for these parts
            values[SIGNALS_KEY] = ["nvl_registration"]
        if fabric.state != nvml_model.FABRIC_STATE_COMPLETED:
            why = _NVL_WHY if multi else "is nvidia-fabricmanager running?"
            yield _result(cid, Status.FAIL, f"fabric registration {state} ({why})", gpu, **values)
        elif fabric.status != 0:
            msg = f"fabric registration failed: {nvml_model.NvmlError(fabric.status)}"
            yield _result(cid, Status.FAIL, msg, gpu, **values)
        elif fabric.healthSummary == 2:
            yield _result(cid, Status.FAIL, "fabric unhealthy", gpu, **values)
        elif fabric.healthSummary == 3:
            yield _result(cid, Status.WARN, "fabric at limited capacity", gpu, **values)
        elif fabric.healthSummary is None and (flags := _health_flags(fabric.healthMask)):
            # Only the v2 struct (drivers before R580, or pynvml up to 12.575): no summary,
            # the mask's flags alone. Reported, not drained: a signal new to these parts.
            msg = f"fabric health: {', '.join(flags)}"
            yield _result(cid, Status.WARN, msg, gpu, **values)
        elif (
            wrong := _domain_mismatch(fabric, want_uuid, opts["clique_id"], majority)
        ) is not None:
            values[SIGNALS_KEY] = ["nvl_domain"]
            yield _result(cid, Status.FAIL, wrong, gpu, sev="high", act="admin", **values)
        else:
            uuid = fabric.clusterUuid
            where = f" (domain {uuid} clique {fabric.cliqueId})" if uuid else ""
            values.pop(SIGNALS_KEY, None)
            yield _result(cid, Status.PASS, f"fabric registration completed{where}", gpu, **values)

    yield from _per_gpu(ctx, cid, judge, snap=snap)
    if snap.available and imex.wanted(ctx, snap):
        yield from boundary.per_component(cid, [imex.COMPONENT], str, lambda _: imex.judge(ctx))


_NVL_WHY = (
    "the NVLink domain is not up: check the rack's NVLink switch trays and NMX-C; "
    "no host nvidia-fabricmanager runs on GB200/GB300"
)


def multi_node_part(gpu: Gpu) -> bool:
    """A GPU of a rack-scale NVLink domain (GB200/GB300 NVL72), by NVML's name or by the
    cluster UUID it registered in."""
    name = (gpu.name or "").upper()
    return any(part in name for part in MULTI_NODE_PARTS) or bool(
        gpu.fabric is not None and gpu.fabric.clusterUuid
    )


def _tray_domain(gpus: tuple[Gpu, ...]) -> tuple[str, int | None] | None:
    """The (cluster UUID, clique) most of this node's registered GPUs report; None when none
    reports one or no single key has a majority (then no GPU is the odd one)."""
    from collections import Counter

    keys = Counter(
        (g.fabric.clusterUuid, g.fabric.cliqueId)
        for g in gpus
        if g.fabric is not None
        and g.fabric.state == nvml_model.FABRIC_STATE_COMPLETED
        and g.fabric.clusterUuid
    )
    if not keys:
        return None
    (key, count), *rest = keys.most_common()
    if rest and rest[0][1] == count:
        return None
    return key  # type: ignore[return-value]


def _domain_mismatch(
    fabric: nvml_model.FabricInfo,
    want_uuid: str,
    want_clique: int | None,
    majority: tuple[str, int | None] | None,
) -> str | None:
    """Why this GPU is not where the node's domain is, or None."""
    uuid, clique = fabric.clusterUuid, fabric.cliqueId
    if want_uuid and (uuid or "").lower() != want_uuid.lower():
        return f"NVLink domain {uuid or 'none'} (expected {want_uuid})"
    if want_clique is not None and clique != want_clique:
        return f"NVLink clique {clique} (expected {want_clique})"
    if majority is not None and uuid and (uuid, clique) != majority:
        if uuid != majority[0]:
            return f"NVLink domain {uuid} (the node's other GPUs: {majority[0]})"
        return f"NVLink clique {clique} (the node's other GPUs: clique {majority[1]})"
    return None


def _block(ctx: CheckContext) -> str | None:
    """This node's block in Slurm's topology file; the file not readable is our side's
    problem (a config path), never the GPU's."""
    from nodecheck.probes.slurm_topology import block_of, read_blocks

    return block_of(read_blocks(Path(ctx.options["topology_file"])), ctx.node)


# NVML_GPU_FABRIC_HEALTH_MASK_* (nvml.h; pynvml 12.570 on): 2-bit fields at these shifts,
# each 0 (not supported), 1 (true) or 2 (false). What a true flag means, for the message.
_HEALTH_FLAGS = (
    (0, "bandwidth degraded"),  # DEGRADED_BW
    (2, "route recovery in progress"),  # ROUTE_RECOVERY
    (4, "route unhealthy"),  # ROUTE_UNHEALTHY
    (6, "access timeout recovery in progress"),  # ACCESS_TIMEOUT_RECOVERY
)


def _health_flags(mask: int | None) -> list[str]:
    return [name for shift, name in _HEALTH_FLAGS if mask and (mask >> shift) & 0x3 == 1]
