"""What a check is told about the run: phase, node, job, its options, where to look."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Whole-value patterns, used with fullmatch: `$` would also match before a trailing newline.
_JOB_ID = re.compile(r"[0-9]{1,20}")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_NODELIST = re.compile(r"[A-Za-z0-9_.,\[\]-]{1,4096}")
_GPU_LIST = re.compile(r"[0-9]{1,4}(,[0-9]{1,4})*,?")


@dataclass(frozen=True)
class JobInfo:
    """The job this prolog/epilog runs for, from Slurm's environment (validated)."""

    job_id: str | None = None
    uid: int | None = None
    user: str | None = None
    gpus: tuple[int, ...] | None = None
    nodelist: str | None = None
    ignored: tuple[str, ...] = ()  # env variables present but malformed
    partition: str | None = None  # SLURM_JOB_PARTITION (a check may be opted in per partition)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> JobInfo:
        ignored: list[str] = []

        def pick(name: str, pattern: re.Pattern[str]) -> str | None:
            value = env.get(name)
            if value is None or value == "":
                return None
            if pattern.fullmatch(value):
                return value
            ignored.append(name)
            return None

        job_id = pick("SLURM_JOB_ID", _JOB_ID)
        uid = pick("SLURM_JOB_UID", _JOB_ID)
        user = pick("SLURM_JOB_USER", _USER)
        partition = pick("SLURM_JOB_PARTITION", _USER)
        gpus = _parse_gpu_list(env.get("SLURM_JOB_GPUS"))
        if gpus is None and env.get("SLURM_JOB_GPUS"):
            ignored.append("SLURM_JOB_GPUS")
        nodelist = env.get("SLURM_NODELIST") or None
        if nodelist is not None and not _NODELIST.fullmatch(nodelist):
            ignored.append("SLURM_NODELIST")
            nodelist = None
        return cls(
            job_id=job_id,
            uid=int(uid) if uid is not None else None,
            user=user,
            gpus=gpus,
            nodelist=nodelist,
            ignored=tuple(ignored),
            partition=partition,
        )

    def label(self) -> str:
        return f"job {self.job_id}" if self.job_id else "no job"


def _parse_gpu_list(raw: str | None) -> tuple[int, ...] | None:
    if not raw or not _GPU_LIST.fullmatch(raw):
        return None
    return tuple(int(part) for part in raw.split(",") if part)


@dataclass(frozen=True)
class NodeSettings:
    """Where this node's probes look; overridable per node class (tests point them at fixtures)."""

    sysfs_root: Path = Path("/sys")
    procfs_root: Path = Path("/proc")
    nvml: str = "real"  # "real", or "replay:/path/to/snapshot.json"
    state_dir: Path = Path("/var/lib/nodecheck")


@dataclass(frozen=True)
class CheckContext:
    """Everything a check may look at: phase, node, job, settings, its options."""

    phase: str
    node: str
    node_class: str
    job: JobInfo
    settings: NodeSettings
    options: Mapping[str, Any] = field(default_factory=dict)
    # The process Slurm started for this hook run: this one in-process, the client when
    # the agent runs it. It and its ancestors carry the job's environment but are ours.
    hook_pid: int | None = None
    # The check's own timeout_s as configured: a check whose inner waits are options
    # (fabric.preflight's join and measure) refuses a setting they would not fit in,
    # rather than be killed at its deadline as "hung" (a FAIL) on every node at once.
    timeout_s: float | None = None

    @property
    def keeps_state(self) -> bool:
        """Whether this run may move what later hook runs compare against (the XID cursor,
        counter baselines): only the hooks do; a manual run looks without touching."""
        return self.phase in ("prolog", "epilog", "health")

    def sys_path(self, *parts: str) -> Path:
        return self.settings.sysfs_root.joinpath(*parts)

    def proc_path(self, *parts: str) -> Path:
        return self.settings.procfs_root.joinpath(*parts)
