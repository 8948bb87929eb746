"""Slurm backend over pyslurm (written to the pyslurm 25.11 API).

pyslurm must be built against the running Slurm's exact major.minor, so it is an
optional extra. `pyslurm_unusable_reason` says why it cannot be used, or None.
"""

from __future__ import annotations

import os
from typing import Any

from nodecheck.slurm import NodeInfo, SlurmError
from nodecheck.slurm.scontrol import checked_node_name, checked_reason


def pyslurm_unusable_reason() -> str | None:
    try:
        import pyslurm
    except Exception as exc:  # ImportError, or a libslurm ABI mismatch at load time
        return f"import failed: {type(exc).__name__}: {exc}"
    if not hasattr(pyslurm, "Node") or not hasattr(pyslurm.Node, "load"):
        return f"pyslurm {getattr(pyslurm, '__version__', '?')} lacks the Node API (need >= 23.x)"
    return None


def _states(node: Any) -> tuple[str, ...]:
    raw = str(getattr(node, "state", "") or "")
    return tuple(s for s in raw.upper().replace(",", "+").split("+") if s)


def _to_info(node: Any) -> NodeInfo:
    reason_time = getattr(node, "reason_time", None)
    return NodeInfo(
        name=str(node.name),
        states=_states(node),
        reason=str(getattr(node, "reason", "") or ""),
        reason_user=str(getattr(node, "reason_user", "") or ""),
        reason_time=str(reason_time) if reason_time else "",
        partitions=tuple(getattr(node, "partitions", None) or ()),
    )


class PyslurmBackend:
    name = "pyslurm"

    def __init__(self, slurm_conf: str | None = None) -> None:
        if slurm_conf:
            # libslurm reads SLURM_CONF when it initialises its configuration.
            os.environ["SLURM_CONF"] = slurm_conf
        import pyslurm

        self._pyslurm = pyslurm

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._pyslurm.RPCError as exc:
            raise SlurmError(f"pyslurm {what}: {exc}") from exc

    def node_info(self, node: str) -> NodeInfo:
        return _to_info(self._call("load node", self._pyslurm.Node.load, checked_node_name(node)))

    def list_nodes(self) -> list[NodeInfo]:
        nodes = self._call("load nodes", self._pyslurm.Nodes.load)
        return [_to_info(n) for n in nodes.values()]

    def _modify(self, node: str, **changes: Any) -> None:
        target = self._pyslurm.Node(checked_node_name(node))
        self._call("modify node", target.modify, self._pyslurm.Node(**changes))

    def drain(self, node: str, reason: str) -> None:
        self._modify(node, state="DRAIN", reason=checked_reason(reason))

    def resume(self, node: str) -> None:
        self._modify(node, state="RESUME")
