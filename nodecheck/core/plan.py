"""The data that flows through one run on its unhealthy (or health) path.

gather (nodecheck/run/gather.py) fills a `Situation`; decide (nodecheck/run/decide.py) turns it
into a `Plan`; act (nodecheck/run/act.py) carries the plan out and says what happened in an
`Acted`; record (nodecheck/run/record.py) writes what the plan and the act leave behind.
Everything here is frozen: a step reads what the step before it made, never changes it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nodecheck.core.clock import Stamp

if TYPE_CHECKING:  # the healthy path never imports nodecheck.slurm
    from nodecheck.core.node import NodeInfo


@dataclass(frozen=True)
class BreakerState:
    open: bool
    why: str
    partition: str = ""
    drained: int = 0  # nodes drained by nodecheck in that partition, this one not counted
    total: int = 0
    recent: int = 0  # nodecheck drains within the window, cluster-wide


@dataclass(frozen=True)
class Marker:
    """nodecheck drained this node: the EXACT reason it set (ownership is this reason, not
    the prefix), when, and whether the drain is held as flapping."""

    reason: str
    at: float
    flapping: bool = False
    checks: tuple[str, ...] = ()  # every failing check of the drain, not only the leading one
    # The last history row before the drain: the passes that count towards its resume are
    # the rows after it, whatever the node's clock said when each was written (a clock
    # stepped back after the drain made every later pass look older than the drain).
    after_run: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> Marker | None:
        if not isinstance(data, dict) or not isinstance(data.get("reason"), str):
            return None
        checks = data.get("checks") or ()
        after = data.get("after_run")
        return cls(
            str(data["reason"]),
            float(data.get("at", 0) or 0),
            bool(data.get("flapping")),
            tuple(str(c) for c in checks) if isinstance(checks, list) else (),
            after if isinstance(after, int) and not isinstance(after, bool) else None,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "at": self.at,
            "flapping": self.flapping,
            "checks": list(self.checks),
            "after_run": self.after_run,
        }


@dataclass(frozen=True)
class HeldBack:
    """The circuit breaker kept nodecheck from draining this failing node: since when, the
    reason it would have set, and why the breaker was open."""

    since: float
    reason: str
    why: str

    @classmethod
    def from_json(cls, data: Any) -> HeldBack | None:
        if not isinstance(data, dict) or not isinstance(data.get("reason"), str):
            return None
        return cls(float(data.get("since", 0) or 0), str(data["reason"]), str(data.get("why", "")))

    def as_json(self) -> dict[str, Any]:
        return {"since": self.since, "reason": self.reason, "why": self.why}


@dataclass(frozen=True)
class PendingFailure:
    """A run that failed and exited non-zero without setting its reason (the controller did
    not answer): Slurm will drain the node with "Prolog error"/"Epilog error" once it can.
    A later run adopts that drain when it matches this failure."""

    reason: str
    at: float
    phase: str
    job: str | None = None
    # Where `at` lies on the node's boot clock: how long ago the failure was is measured
    # there (nodecheck.core.clock), not on the wall clock, which may be stepped meanwhile.
    boot_id: str = ""
    since_boot: float = -1.0

    @property
    def stamp(self) -> Stamp:
        return Stamp(self.at, self.boot_id, self.since_boot)

    @classmethod
    def from_json(cls, data: Any) -> PendingFailure | None:
        if not isinstance(data, dict) or not isinstance(data.get("reason"), str):
            return None
        job = data.get("job")
        at = float(data.get("at", 0) or 0)
        stamp = Stamp.from_json(at, data)
        return cls(
            str(data["reason"]),
            at,
            str(data.get("phase", "")),
            None if job is None else str(job),
            stamp.boot_id,
            stamp.since_boot,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "at": self.at,
            "phase": self.phase,
            "job": self.job,
            **self.stamp.as_json(),
        }


@dataclass(frozen=True)
class HistoryWindow:
    """What the node's history says, read once in one transaction."""

    marker: Marker | None = None
    held_back: HeldBack | None = None
    pending: PendingFailure | None = None
    drains_in_window: int = 0  # drain episodes within flap_window_s
    passes_since_drain: int = 0  # health passes since the marker, this run not counted
    validated: bool = True  # the node has passed a validation job at least once
    readable: bool = True
    error: str = ""


@dataclass(frozen=True)
class SlurmView:
    """This node as the controller sees it, and (breaker enabled) every node: the snapshot
    the breaker judges. `error` when the controller could not be read within the budget."""

    node: NodeInfo | None = None
    nodes: tuple[NodeInfo, ...] = ()
    error: str = ""
    # slurmctld's clock at the read (epoch seconds), what Slurm's reason times are compared
    # with; None when it was not asked (not needed) or could not be told.
    controller_now: float | None = None


@dataclass(frozen=True)
class Situation:
    """Everything the decision needs, gathered once."""

    node: str
    phase: str
    job_id: str | None
    now: float  # the node's wall clock: what records carry as their time, for people
    history: HistoryWindow = field(default_factory=HistoryWindow)
    slurm: SlurmView | None = None  # None: not read (the plan needs no controller state)
    clock: Stamp | None = None  # the node's clocks at `now` (None: the wall clock only)

    @property
    def stamp(self) -> Stamp:
        return self.clock if self.clock is not None else Stamp(self.now)


class Step(enum.Enum):
    """What act does with the controller (and record with the state)."""

    NOTHING = "nothing"
    DRAIN = "drain"  # set our reason: a new drain, a flapping reason, or adopting Slurm's
    KEEP = "keep"  # already drained with our reason: no controller write
    RESUME = "resume"
    HOLD = "hold"  # stays drained until a human resumes it (flapping, manual-resume check)
    WAIT = "wait"  # passing, but not yet for resume_after_passes health runs
    FORGET = "forget"  # our marker is stale (not drained, or someone else's reason now)
    ADMIN_KEPT = "admin kept"  # drained by someone else: never touched
    BREAKER_HELD = "breaker held"  # the breaker is open: no drain by any route
    WOULD_DRAIN = "would drain"  # dry run
    FAILED = "failed"  # the controller could not be read: nothing can be decided safely


@dataclass(frozen=True)
class Plan:
    """The decision: a step, the reason it sets, the text the run reports as its action,
    the exit code, and what record must write."""

    step: Step
    action: str  # what the run reports (RunOutcome.action_taken) if act succeeds
    exit_code: int
    reason: str | None = None
    why: str = ""
    new_episode: bool = False  # a drain episode starts (counts for flap control)
    flapping: bool = False
    flap_hold_starts: bool = False
    adopted: str = ""  # the Slurm reason this drain replaces (e.g. "Prolog error")
    check_wave: bool = False  # re-read after draining: did a wave push us past the limit?
    breaker: BreakerState | None = None
    held_since: float | None = None


@dataclass(frozen=True)
class Acted:
    """What act did: the action text, whether the controller refused or was unreachable,
    and, when a wave pushed nodecheck past the breaker's limit, the breaker's state."""

    action: str
    failed: bool = False
    backed_off: BreakerState | None = None
    error: str = ""
