"""Whose drain is it? The one answer every caller uses: the hooks and health (plan in
run/decide.py), `nodecheck resume`, `nodecheck validate`, `nodecheck report` and the
circuit breaker.

A drain is nodecheck's when its reason is exactly the one nodecheck set. Where the caller
has the node's state (the node's own runs; `resume` where the state is readable), that is
the reason kept there: an admin who edits or appends to it takes the drain over, whatever
the words. Where it has not (validate, report and the breaker judge other nodes from the
controller's view), the reason must be, whole, one nodecheck's grammar writes
(run/reason.py `is_nodecheck_reason`): a `nodecheck:` prefix alone is anyone's to type.

Slurm's own "Prolog error"/"Epilog error" drain that follows a failure nodecheck recorded
is a separate rule (decide.py `_adoptable`): it is adopted, not owned, until nodecheck
sets its real reason.

Pure: no I/O. The caller reads the kept reason (history.drain_reason) when it has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodecheck import REASON_PREFIX
from nodecheck.run.reason import is_nodecheck_reason

if TYPE_CHECKING:
    from nodecheck.slurm import NodeInfo


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
