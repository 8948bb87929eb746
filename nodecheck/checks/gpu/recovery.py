"""What a GPU recovery action code means for the node (gpu.remap, and Xid 154 in gpu.xid).

The probe `nodecheck.probes.recovery_action` says which action a code names under the
running driver's branch; the verdict on each action is here."""

from __future__ import annotations

from dataclasses import dataclass

from nodecheck.probes import recovery_action
from nodecheck.probes.recovery_action import Action

# Action name -> (status, remedy): "fail", "warn" or "info" (nothing to report), and a
# results.REMEDIES key or "".
ACTION_VERDICTS: dict[str, tuple[str, str]] = {
    recovery_action.NONE.name: ("info", ""),
    recovery_action.GPU_RESET.name: ("fail", "reset-gpu"),
    recovery_action.NODE_REBOOT.name: ("fail", "reboot"),
    # The driver reports the action it really needs once peer-to-peer traffic stopped.
    recovery_action.DRAIN_P2P.name: ("warn", ""),
    recovery_action.DRAIN_AND_RESET.name: ("fail", "reset-gpu"),
    recovery_action.GPU_RESET_BUS.name: ("fail", "reset-gpu"),
    # The IMEX domain, not this GPU. NVIDIA's own Kubernetes device plugin keeps such an Xid
    # non-fatal for GPU scheduling (its NVML health monitor, IsEventNonFatal): a WARN, not a
    # drain of every node of the domain.
    recovery_action.RECOVER_IMEX_DOMAIN.name: ("warn", ""),
    recovery_action.BUS_RESET.name: ("fail", "reset-gpu"),
    recovery_action.SYSTEM_REBOOT.name: ("fail", "reboot"),
    # Branch unknown: of a bus reset and an IMEX recovery only the first leaves a GPU that
    # must not run jobs, so the safe reading drains for a reset.
    recovery_action.EITHER_5.name: ("fail", "reset-gpu"),
}


@dataclass(frozen=True)
class Verdict:
    """What one recovery action code means for the node, under one branch."""

    code: int
    status: str  # "fail", "warn", "info"
    remedy: str
    label: str  # the action's name, or why it has none
    branch: int | None

    @property
    def why(self) -> str:
        where = f"driver R{self.branch}" if self.branch else "driver branch unknown"
        return f"0x{self.code:x} ({self.label}; {where})"


def judge(code: int, branch: int | None) -> Verdict:
    """The verdict on one code under one driver branch (None: unknown branch). A code the
    branch does not define WARNs: worth a look, not a drain nodecheck cannot explain."""
    action: Action | None = recovery_action.table(branch).get(code)
    if action is None:
        return Verdict(code, "warn", "", "not defined for this driver branch", branch)
    status, remedy = ACTION_VERDICTS[action.name]
    return Verdict(code, status, remedy, action.label, branch)
