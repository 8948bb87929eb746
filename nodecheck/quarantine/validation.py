"""Where one node is on its way through the quarantine loop: its phase, how the loop will
leave it, and what the loop learnt of it. Shared by the loop's steps (follow.py), the
fabric stage (fabric_stage.py) and the loop itself (loop.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from nodecheck.core.node import NodeInfo


class Phase(enum.Enum):
    SKIPPED = "skipped"
    SETTLING = "settling"
    VALIDATING = "validating"
    REBOOTING = "rebooting"
    FABRIC_WAIT = "waiting for the fabric stage"
    FABRIC = "fabric"
    DONE = "done"


class Leave(enum.Enum):
    OUT = "out"
    AS_FOUND = "as found"
    RESERVED = "reserved"


@dataclass
class NodeValidation:
    """One node's way through the loop (mutable while the loop runs)."""

    node: str
    found: NodeInfo | None = None  # as the run found it, to leave it so when it must
    jobs: list[int] = field(default_factory=list)
    result: str = "pending"
    phase: Phase = Phase.SETTLING
    leave: Leave = Leave.AS_FOUND
    added: bool = False  # this run put it into the reservation
    resumed: bool = False  # this run resumed it (inside the reservation)
    reboots: int = 0
    # The level runs deep.fabric: a pass of the node's own job waits for the fabric stage.
    fabric_stage: bool = False
    fabric_job: int | None = None  # the multi-node deep.fabric job it is in
    fabric_note: str = ""  # why deep.fabric did not measure it there (a lone node)

    @property
    def done(self) -> bool:
        return self.phase in (Phase.DONE, Phase.SKIPPED)

    @property
    def held_back(self) -> bool:
        return self.phase is Phase.DONE and self.leave is Leave.RESERVED

    @property
    def keep_reserved(self) -> bool:
        """Still validating, or failed without a drain: either way not for user jobs."""
        return not self.done or self.held_back
