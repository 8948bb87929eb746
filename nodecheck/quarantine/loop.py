"""`nodecheck validate NODELIST`: quarantine nodes, validate them as Slurm jobs, and return
or keep them out.

1. Put the nodes into the maintenance reservation nodecheck owns (user jobs cannot land
   there), then resume those nodecheck drained, so they are schedulable only inside it.
2. Submit one validation job per node (`nodecheck validate-job`; its name and comment say
   what it validates and why, so accounting keeps it).
3. Wait for each job. A node whose job asked for a reboot is validated again once it is
   back. A job whose prolog failed was requeued held by Slurm: it is cancelled, and the
   prolog's own drain stands.
4. Every node leaves the reservation: a passing node is back in service; a failing one is
   drained by its job with the deep check's figure (or rebooting, or held for replacement).
An admin's drain is never touched: such a node is skipped, and says so.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nodecheck.quarantine.job import (
    EXIT_DRAINED,
    EXIT_HELD_BACK,
    EXIT_PASSED,
    EXIT_REBOOT,
    EXIT_REPLACE,
)
from nodecheck.run.config import Config
from nodecheck.slurm import NodeInfo, SlurmBackend, SlurmError
from nodecheck.slurm.jobs import JobState, SlurmJobs

JOB_NAME = "nodecheck-validate"
RESULT_FOR_EXIT = {
    EXIT_PASSED: "passed: back in service",
    EXIT_DRAINED: "failed: drained",
    EXIT_REPLACE: "failed: held for replacement",
    EXIT_HELD_BACK: "failed: not drained, the circuit breaker is open; kept in the reservation",
}


@dataclass
class NodeValidation:
    """One node's way through the loop (mutable while the loop runs)."""

    node: str
    jobs: list[int] = field(default_factory=list)
    result: str = "pending"
    reboots: int = 0
    done: bool = False
    held_back: bool = False

    @property
    def keep_reserved(self) -> bool:
        """Still validating, or failed without a drain: either way not for user jobs."""
        return not self.done or self.held_back


def expand_nodes(cli_run: Callable[[list[str]], str], scontrol: str, nodelist: str) -> list[str]:
    """Slurm's own expansion of a hostlist expression (`scontrol show hostnames`)."""
    out = cli_run([scontrol, "show", "hostnames", nodelist])
    return [line.strip() for line in out.splitlines() if line.strip()]


def validation_script(config: Config) -> str:
    """The executable a validation job runs: the configured one, or the `nodecheck`
    console script of the Python running this command."""
    return config.values["validate_command"] or str(Path(sys.executable).parent / "nodecheck")


def validate_nodes(
    config: Config,
    config_path: str | None,
    backend: SlurmBackend,
    jobs: SlurmJobs,
    nodes: list[str],
    level: str,
    why: str,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
) -> list[NodeValidation]:
    timeout_s = float(config.values["validate_timeout_s"]) if timeout_s is None else timeout_s
    reservation = config.values["validate_reservation"]
    known = {n.name: n for n in backend.list_nodes()}
    runs: dict[str, NodeValidation] = {}
    for node in nodes:
        run = runs[node] = NodeValidation(node)
        info = known.get(node)
        if info is None:
            run.result, run.done = "skipped: unknown to Slurm", True
        elif info.drained and not info.drained_by_nodecheck:
            run.result, run.done = f"skipped: drained by someone else ({info.reason})", True
    chosen = [r.node for r in runs.values() if not r.done]
    if not chosen:
        return list(runs.values())
    # Reserve first, resume second: a resumed node is never open to user jobs.
    jobs.reserve(reservation, chosen)
    for node in chosen:
        if _needs_resume(known[node]):
            backend.resume(node)
        runs[node].jobs.append(_submit(config, config_path, jobs, reservation, node, level, why))
    deadline = time.monotonic() + timeout_s
    while not all(r.done for r in runs.values()) and time.monotonic() < deadline:
        time.sleep(poll_s)
        for run in runs.values():
            if not run.done:
                _follow(config, config_path, backend, jobs, reservation, run, level, why)
    for run in runs.values():
        if not run.done:
            run.result = "timed out: still in the reservation"
    # Finished nodes leave the reservation; ones still validating (or failed but held back
    # by the breaker) stay quarantined in it, and so do all of them if this command dies
    # half-way: quarantined is the safe side. Other runs' nodes are left as they are.
    jobs.release(
        reservation, [r.node for r in runs.values() if r.node in chosen and not r.keep_reserved]
    )
    return list(runs.values())


def _needs_resume(info: NodeInfo) -> bool:
    return info.drained_by_nodecheck or "DOWN" in info.states


def _submit(
    config: Config,
    config_path: str | None,
    jobs: SlurmJobs,
    reservation: str,
    node: str,
    level: str,
    why: str,
) -> int:
    args = ["validate-job", "--level", level]
    if config_path:
        args = ["--config", config_path, *args]
    limit_min = max(1, int(float(config.values["validate_timeout_s"]) // 60))
    comment = f"nodecheck validate {node} level={level}: {why}"[:250]
    return jobs.submit(
        node, reservation, JOB_NAME, comment, validation_script(config), args, limit_min
    )


def _follow(
    config: Config,
    config_path: str | None,
    backend: SlurmBackend,
    jobs: SlurmJobs,
    reservation: str,
    run: NodeValidation,
    level: str,
    why: str,
) -> None:
    """One look at a node's current job; updates `run`."""
    try:
        state: JobState = jobs.job_state(run.jobs[-1])
    except SlurmError:
        return  # the controller blinked: look again next time
    if state.held_after_launch_failure:
        jobs.cancel(state.job_id)
        info = backend.node_info(run.node)
        run.result, run.done = f"failed in the prolog: {info.reason or 'drained'}", True
        return
    if state.finished and state.exit_code == EXIT_REBOOT and run.reboots == 0:
        run.result, run.reboots = "rebooting", 1
        return
    if run.result == "rebooting":
        info = backend.node_info(run.node)
        if any(s.startswith("REBOOT") for s in info.states) or "DOWN" in info.states:
            return  # not back yet
        run.result = "validating again after the reboot"
        run.jobs.append(_submit(config, config_path, jobs, reservation, run.node, level, why))
        return
    if state.finished:
        code = state.exit_code
        run.result = RESULT_FOR_EXIT.get(code, f"job {state.state} (exit {code})")
        run.held_back = code == EXIT_HELD_BACK
        if code != EXIT_PASSED:
            try:
                reason = backend.node_info(run.node).reason
            except SlurmError:
                reason = ""
            run.result += f" ({reason})" if reason else ""
        run.done = True
