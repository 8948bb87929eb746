"""A node as the controller reports it (the one shape every Slurm backend returns and every
layer reads), and whose drain it holds.

Whose drain is it? The one answer every caller uses: the hooks and health (plan in
run/decide.py), `nodecheck resume`, `nodecheck validate`, `nodecheck report` and the
circuit breaker.

A drain is nodecheck's when its reason is exactly the one nodecheck set. Where the caller
has the node's state (the node's own runs; `resume` where the state is readable), that is
the reason kept there: an admin who edits or appends to it takes the drain over, whatever
the words. Where it has not (validate, report and the breaker judge other nodes from the
controller's view), the reason must be, whole, one nodecheck's grammar writes
(core/reason.py `is_nodecheck_reason`): a `nodecheck:` prefix alone is anyone's to type.

Slurm's own "Prolog error"/"Epilog error" drain that follows a failure nodecheck recorded
is a separate rule (decide.py `_adoptable`): it is adopted, not owned, until nodecheck
sets its real reason.

Pure: no I/O. The caller reads the kept reason (history.drain_reason) when it has it."""

from __future__ import annotations

from dataclasses import dataclass, field

from nodecheck.core.reason import REASON_PREFIX, is_nodecheck_reason


@dataclass(frozen=True)
class NodeInfo:
    name: str
    # Base state plus flags, upper case, e.g. ("IDLE", "DRAIN") or ("MIXED", "DRAIN").
    states: tuple[str, ...]
    reason: str = ""
    reason_user: str = ""
    reason_time: str = ""
    partitions: tuple[str, ...] = field(default_factory=tuple)

    @property
    def drained(self) -> bool:
        """Drain requested (DRAINING or DRAINED both carry the DRAIN flag)."""
        return any(s in ("DRAIN", "DRAINED", "DRAINING") for s in self.states)

    @property
    def drained_by_nodecheck(self) -> bool:
        """Nodecheck's drain as the controller's view alone shows it (no node state to
        compare): `drain_owner` below decides, for every caller."""
        return drain_owner(self, None).ours


@dataclass(frozen=True)
class Ownership:
    """Whether a node's drain is nodecheck's, and why (said to admins as it is)."""

    ours: bool
    why: str


def drain_owner(info: NodeInfo, kept: str | None) -> Ownership:
    """`kept`: the exact reason nodecheck set, as the node's state keeps it; None where the
    caller has no state for the node (or the state holds no drain)."""
    if not info.drained:
        return Ownership(False, "not drained")
    if kept:
        if info.reason == kept:
            return Ownership(True, "the reason nodecheck set (kept in the node's state)")
        return Ownership(
            False, f"drained by someone else: the reason is not the one nodecheck set ({kept})"
        )
    if is_nodecheck_reason(info.reason):
        return Ownership(True, "a reason exactly as nodecheck writes it (no state to compare)")
    if info.reason.startswith(REASON_PREFIX):
        return Ownership(
            False,
            "drained by someone else: the reason is not exactly one nodecheck writes "
            "(edited or added to), and there is no state of this node's to compare",
        )
    return Ownership(False, "drained by someone else")
