"""The only door to the Slurm controller: drain, resume, read node state.

Nothing on the healthy path may come through here. Two implementations share one
contract: pyslurm (when importable and built for the running Slurm) and the scontrol
CLI (always present where Slurm is). `select_backend` chooses and says why.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from nodecheck.core.node import NodeInfo
from nodecheck.hostlist import is_plain_node_name


class SlurmError(RuntimeError):
    """The controller could not be reached or refused the request."""


_call_deadline: float | None = None


# Every node name and reason goes to Slurm as one argument; these refuse what could not be
# one (a name that is not a plain host name, a reason of several lines).
def checked_node_name(node: str) -> str:
    if not is_plain_node_name(node):
        raise SlurmError(f"refusing node name {node!r}: not a plain host name")
    return node


def checked_reason(reason: str) -> str:
    if not reason or any(ch in reason for ch in "\r\n\0"):
        raise SlurmError("refusing drain reason: empty or not a single line")
    return reason


def set_call_deadline(deadline: float | None) -> None:
    """Controller calls made from now on end by this time.monotonic() deadline (the run's
    budget), whatever the backend's own timeout; None lifts it."""
    global _call_deadline
    _call_deadline = deadline


def call_timeout(default: float) -> float:
    """Seconds the next controller call may take (<= 0: the budget is spent)."""
    if _call_deadline is None:
        return default
    return min(default, _call_deadline - time.monotonic() - 0.1)


def run_slurm_tool(
    args: list[str],
    slurm_conf: str | None,
    timeout_s: float,
    what: str,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run one Slurm command (scontrol, sinfo, sacct, sacctmgr): argument list, a clean
    environment with the site's SLURM_CONF, bounded by `timeout_s` and the run's budget
    (call_timeout). Its failure to run at all is a SlurmError naming `what`; its exit
    status is the caller's to judge (`failed`)."""
    from nodecheck.core.bounded import run_command

    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", **(extra_env or {})}
    conf = slurm_conf or os.environ.get("SLURM_CONF")
    if conf:
        env["SLURM_CONF"] = conf
    timeout = call_timeout(timeout_s)
    if timeout <= 0:
        raise SlurmError(f"{what}: not attempted, the run's time budget is spent")
    try:
        return run_command(args, timeout, env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmError(f"{what}: {exc}") from exc


def failed(proc: subprocess.CompletedProcess, what: str) -> SlurmError:
    """The error a Slurm command's non-zero exit makes, with what it said."""
    detail = (proc.stderr or proc.stdout).strip().replace("\n", " ")[:300]
    return SlurmError(f"{what} failed (rc={proc.returncode}): {detail}")


def format_reason_time(epoch: int) -> str:
    """A reason's time as scontrol prints it: local time without zone, 2026-11-25T21:40:01.
    Every backend reports it so, whatever form Slurm handed it over in."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


def reason_epoch(when: str) -> float | None:
    """Slurm prints reason times as local ISO time; pyslurm gives epoch seconds."""
    if not when:
        return None
    if when.isdigit():
        return float(when)
    try:
        return datetime.fromisoformat(when).timestamp()
    except ValueError:
        return None


class SlurmBackend(Protocol):
    name: str

    def node_info(self, node: str) -> NodeInfo: ...

    def list_nodes(self) -> list[NodeInfo]: ...

    def drain(self, node: str, reason: str) -> None: ...

    def resume(self, node: str) -> None: ...


class BreakerSlots(Protocol):
    """What the circuit breaker asks of a backend beyond SlurmBackend (both backends have
    it; nodecheck/slurm/claims.py): its slots (reservations) and a partition's size."""

    def claims(self) -> list: ...

    def claim(self, name: str, node: str, minutes: int) -> bool: ...

    def release(self, name: str) -> None: ...

    def partition(self, name: str) -> object: ...
