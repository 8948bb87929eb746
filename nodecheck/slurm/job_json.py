"""Job records from Slurm's JSON (`squeue --json`), read by Slurm's codes, never its prose.

`scontrol show job` prints a pending job's "reason" as free text when Slurm has one
(`Reason=launch_failed_requeued_held`: the description with its spaces made underscores),
and squeue's table prints it with spaces; neither is a code. The JSON carries the codes:
`job_state` (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...), `state_reason` (the
enum's name: JobHeldUser, JobHeldAdmin, BeginTime, None, ...), `priority` (0 while held),
`restart_cnt` (requeues) and `exit_code`. Real 22.05 output: tests/fixtures/real/slurm/
squeue-json-validation-jobs-22.05.json.

Shapes (the fields read here):

    field        22.05 (openapi v0.0.38)          later data_parser versions
    job_state    "PENDING"                        ["PENDING"] (base state first, then flags)
    priority     0                                {"set": true, "infinite": false, "number": 0}
    exit_code    768 (the wait status: exit 3)    {"status": [...], "return_code": {...} or 3,
                                                   "signal": {"id": {...} or 9, ...}}
    restart_cnt, state_reason, name, comment, admin_comment, required_nodes, nodes: the same.

22.05's squeue ignores its filters with --json (every job slurmctld still holds comes back,
finished ones too): the caller picks its jobs by name and id. The later shapes are read as
Slurm's node records of those releases show them (tests/fixtures/real/slurm/24.11, 26.05);
no job record of theirs has been captured yet (tools/slurm-roots/capture-job-json.py does
it in a root of that release).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nodecheck.slurm import SlurmError
from nodecheck.slurm.node_json import json_records

# Job states in which a job may still start or is running (everything else has ended).
ACTIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
                 "RESIZING", "SIGNALING", "STAGE_OUT")  # fmt: skip
BASE_STATES = ("PENDING", "RUNNING", "SUSPENDED", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT",
               "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY")  # fmt: skip
# Slurm's reason codes for a hold: the job never starts until someone releases it.
HELD_REASONS = ("JobHeldUser", "JobHeldAdmin")


@dataclass(frozen=True)
class JobRecord:
    """One job as slurmctld holds it, in Slurm's codes."""

    job_id: int
    name: str
    state: str  # the base state code (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...)
    reason: str  # Slurm's reason code (state_reason): JobHeldUser, BeginTime, None, ...
    priority: int | None  # 0 while held
    restarts: int  # times requeued (a failed launch requeues a batch job)
    exit_code: int | None  # the batch script's exit status, 128+N for signal N; None: unknown
    node: str  # the node it asked for (--nodelist), else the one it ran on
    comment: str = ""
    admin_comment: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def held(self) -> bool:
        """Pending and held: it will not start until released (priority 0 is Slurm's hold)."""
        return self.state == "PENDING" and (self.priority == 0 or self.reason in HELD_REASONS)

    @property
    def launch_failed(self) -> bool:
        """Requeued and held by Slurm after its launch failed (a prolog that exited
        non-zero): it never runs by itself, and holds its reservation "in use"."""
        return self.held and self.restarts > 0


def parse_squeue_json(text: str) -> list[JobRecord]:
    """Every job of one `squeue --json` document; SlurmError when it is not one Slurm wrote."""
    return [_job(record) for record in json_records(text, "jobs", "squeue --json")]


def _job(record: dict[str, Any]) -> JobRecord:
    job_id = _number(record.get("job_id"))
    if job_id is None:
        raise SlurmError(f"job record without a job_id: {sorted(record)[:8]}")
    required = _text(record.get("required_nodes"))
    return JobRecord(
        job_id=job_id,
        name=_text(record.get("name")),
        state=_state(record.get("job_state")),
        reason=_text(record.get("state_reason")),
        priority=_number(record.get("priority")),
        restarts=_number(record.get("restart_cnt")) or 0,
        exit_code=_exit_code(record.get("exit_code")),
        node=required or _text(record.get("nodes")),
        comment=_text(record.get("comment")),
        admin_comment=_text(record.get("admin_comment")),
    )


def _state(value: Any) -> str:
    words = [value] if isinstance(value, str) else [w for w in value or [] if isinstance(w, str)]
    base = [w.upper() for w in words if w.upper() in BASE_STATES]
    return base[0] if base else (words[0].upper() if words else "UNKNOWN")


def _exit_code(value: Any) -> int | None:
    """The script's exit status as `scontrol show job` prints it (ExitCode=3:0 -> 3), or
    128+N when signal N ended it (ExitCode=0:9 -> 137)."""
    if isinstance(value, dict):
        signal = value.get("signal")
        number = _number(signal.get("id")) if isinstance(signal, dict) else None
        if number:
            return 128 + number
        return _number(value.get("return_code"))
    status = _number(value)
    if status is None:
        return None
    if status & 0x7F:  # the wait status of a process a signal ended
        return 128 + (status & 0x7F)
    return (status >> 8) & 0xFF


def _number(value: Any) -> int | None:
    """An integer from a plain number or a {"set", "infinite", "number"} one."""
    if isinstance(value, dict):
        if not value.get("set") or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
