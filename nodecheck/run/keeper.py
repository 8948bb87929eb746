"""The hook's keeper: the run happens in a child, so nothing it gets stuck on holds slurmd.

The first look (nodecheck.run.firstlook) finds a config, state directory or log directory
that does not answer when the run starts. A filesystem can also stop answering during the
run (an NFS server that goes away between two writes): the next write to the log file, or
the history's next read or write, then sleeps in the kernel, unkillable, and a hook
process doing it would hold slurmd's job start until PrologEpilogTimeout, with no reason
set. So the process slurmd started (or the agent's worker holding its descriptors) only
keeps watch:

- it forks the run (isolate.fork_detached: the run holds a pipe to the keeper for its
  stdout/stderr, not slurmd's, and dies with the keeper) and relays what the run prints
  to its own stderr, line for line;
- the run tells it, as it goes (`report`), what it needs to take over: the config it acts
  with and the run's deadline, then the verdict's exit code once Slurm has been told;
- when the run ends, the keeper exits with its code. When the run is still going past its
  deadline, it is stuck in the kernel: the keeper kills it (it holds nothing of slurmd's, so
  where SIGKILL cannot reach it yet, it no longer matters), says so, and ends the hook with
  the verdict the run reached, or, when it had none, drains the node itself with a reason
  naming the run's last step (nodecheck.run: the node's filesystem is broken, not a check).

Outside a keeper (manual runs, tests calling the pipeline) `report` does nothing.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodecheck.core import isolate
from nodecheck.run import pool

if TYPE_CHECKING:
    from nodecheck.run.config import Config

KEEPER_CHECK_ID = "nodecheck.run"
# After the run's deadline: what the run's own reaping may take before it counts as stuck,
# and the most the keeper's own drain may take. Together they keep the hook within
# budget_s + 1 s (docs/hostile.md).
REAP_SLACK_S = 0.3
KEEPER_DRAIN_S = 0.5

_channel: int | None = None  # in the run child: the pipe to its keeper


def report(kind: str, *values: Any) -> None:
    """Tell the keeper (if this run has one) what it needs should the run get stuck:
    ("acting", node, job_id, phase, config, deadline), ("deadline", deadline),
    ("step", text) before a step that touches the state or log filesystem, ("planned",
    step, reason, exit_code) before the controller is asked to drain or resume, ("verdict",
    exit_code) once the verdict has been acted on, ("exit", exit_code) as the run ends."""
    if _channel is None:
        return
    with contextlib.suppress(OSError):  # a keeper that is gone has nothing left to learn
        isolate.send_frame(_channel, (kind, *values))


@dataclass
class _Watch:
    """What the keeper has heard from its run (mutable while the run goes on)."""

    deadline: float
    node: str | None = None
    job_id: str | None = None
    phase: str = ""
    config: Config | None = None
    step: str = "starting"
    planned: tuple[str, str | None, int] | None = None  # step ("drain"/"resume"), reason, exit
    verdict_code: int | None = None
    exit_code: int | None = None  # the run's own, said just before it exits
    buffer: bytes = b""

    def take(self, frame: tuple[Any, ...]) -> None:
        kind = frame[0]
        if kind == "acting":
            self.node, self.job_id, self.phase, self.config, self.deadline = frame[1:6]
        elif kind == "deadline":
            self.deadline = frame[1]
        elif kind == "step":
            self.step = frame[1]
        elif kind == "planned":
            self.planned = frame[1:4]
        elif kind == "verdict":
            self.verdict_code = frame[1]
        elif kind == "exit":
            self.exit_code = frame[1]


def keep(run: Callable[[], int], default_deadline: float) -> int:
    """Run `run` in a child and return its exit code; see the module's docstring. Until
    the run reports its own deadline, `default_deadline` (time.monotonic()) stands."""
    frames_read, frames_write = isolate.pipe()
    output_read, output_write = isolate.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = isolate.fork_detached(
            keep_fd=frames_write, output_fd=output_write, keep_also=pool.lent_fds()
        )
    except OSError:  # no child to be had: the run goes on here, unkept
        for fd in (frames_read, frames_write, output_read, output_write):
            os.close(fd)
        return run()
    if pid == 0:
        _run_child(run, frames_write)
    os.close(frames_write)
    os.close(output_write)
    try:
        return _watch(pid, frames_read, output_read, _Watch(default_deadline))
    finally:
        os.close(frames_read)
        os.close(output_read)


def _run_child(run: Callable[[], int], channel: int) -> None:
    global _channel
    _channel = channel
    code = 70
    try:
        code = run()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        # A thread of the run may be stuck in the kernel (the first look at a hung
        # filesystem): the process then cannot end, and its descriptors (the keeper's
        # pipes, the log file) would stay open with it. The keeper learns the exit code
        # here and sees the output end now.
        report("exit", code)
        os.closerange(0, os.sysconf("SC_OPEN_MAX"))
        os._exit(code)


def _watch(pid: int, frames: int, output: int, watch: _Watch) -> int:
    """Relay and listen until the run ends (its output reaches EOF: the run's own children
    hold none of it) or its deadline passes."""
    listening = [frames, output]
    while True:
        wait = watch.deadline + REAP_SLACK_S - time.monotonic()
        ready, _, _ = select.select(listening, [], [], max(0.0, wait))
        if frames in ready and not _take_frames(frames, watch):
            listening.remove(frames)
        if output in ready and not _relay(output):
            _take_frames(frames, watch)
            if watch.exit_code is not None:
                # It said its last word: its exit (giving back its memory) is not waited
                # for, nor a thread of it still stuck in the kernel. It dies with us, and
                # init reaps it.
                with contextlib.suppress(ChildProcessError):
                    isolate.wait_exit(pid, 0.0)
                return watch.exit_code
            try:
                status = isolate.wait_exit(pid, REAP_SLACK_S)
            except ChildProcessError:
                status = 0
            if status is not None:
                return _ended(status, watch)
            return _stuck(pid, watch)  # closed its output, yet cannot exit
        if not ready:
            return _stuck(pid, watch)


def _relay(output: int) -> bool:
    """Copy what the run printed to our stderr (slurmd's pipe, or the agent client's);
    False at end of file."""
    return isolate.read_available(output, _to_stderr)


def _to_stderr(data: bytes) -> None:
    with contextlib.suppress(OSError):  # nobody reading any more: the run goes on regardless
        while data:
            data = data[os.write(2, data) :]


def _take_frames(frames: int, watch: _Watch) -> bool:
    """Take in what the run has reported; False at end of file."""

    def take(chunk: bytes) -> None:
        taken, watch.buffer = isolate.take_frames(watch.buffer + chunk)
        for frame in taken:
            watch.take(frame)

    return isolate.read_available(frames, take)


def _ended(status: int, watch: _Watch) -> int:
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    # Killed (the OOM killer, an admin): nodecheck's own failure, judged as the site asks.
    why = f"the run was killed by signal {os.WTERMSIG(status)} while {watch.step}"
    return _take_over(watch, why, stuck=False)


def _stuck(pid: int, watch: _Watch) -> int:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # now, or as soon as the kernel lets it go
    with contextlib.suppress(ChildProcessError):
        isolate.wait_exit(pid, 0.05)
    why = f"run stuck past its budget while {watch.step} (hung filesystem?)"
    return _take_over(watch, why, stuck=True)


def _take_over(watch: _Watch, why: str, stuck: bool) -> int:
    """End the hook for a run that cannot: with its verdict when it reached one, with the
    controller call it had planned, or with the keeper's own verdict (a FAIL for a stuck
    run, the node's fault; an ERROR for a killed one, judged by on_internal_error)."""
    if watch.verdict_code is not None:
        return _unfinished(why, watch.verdict_code, "acted on")
    if watch.config is None or watch.node is None:
        # Not even the config was known: nothing to act with, and on_internal_error's
        # default (pass) is the only policy there is.
        return _unfinished(why, 0, "none: no config known")
    if watch.planned is not None:
        # Stuck in the controller call itself: make it again, bounded, through scontrol.
        step, reason, code = watch.planned
        action = _drain(watch.config, watch.node, reason) if step == "drain" and reason else "none"
        return _unfinished(why, code, "planned", reason, action)
    from nodecheck.core.results import CheckResult, Status
    from nodecheck.run.decide import decide

    if stuck:
        result = CheckResult(KEEPER_CHECK_ID, Status.FAIL, why, severity="critical", remedy="admin")
    else:
        result = CheckResult(KEEPER_CHECK_ID, Status.ERROR, why)
    verdict = decide([result], watch.phase, watch.job_id, watch.config.on_internal_error)
    action = "none"
    if verdict.reason is not None:
        action = _drain(watch.config, watch.node, verdict.reason)
    return _unfinished(why, verdict.exit_code, verdict.status.name, verdict.reason, action)


def _unfinished(
    why: str, exit_code: int, verdict: str, reason: str | None = None, action: str = "none"
) -> int:
    """The one line that says what became of a run that did not finish; its exit code."""
    from nodecheck.log import get_logger

    get_logger().error(
        "run_unfinished",
        error=why,
        exit_code=exit_code,
        verdict=verdict,
        reason=reason,
        action=action,
    )
    return exit_code


def _drain(config: Config, node: str, reason: str) -> str:
    """One drain attempt, bounded: the run used the budget, the keeper has only its slack.
    Through scontrol whatever the configured backend: a process that can be killed at the
    deadline, where a started libslurm RPC (pyslurm) ends only at Slurm's MessageTimeout."""
    from nodecheck.run.act import backend_for
    from nodecheck.run.config import with_overrides
    from nodecheck.slurm import SlurmError, set_call_deadline

    set_call_deadline(time.monotonic() + KEEPER_DRAIN_S)
    try:
        backend_for(with_overrides(config, slurm_backend="scontrol"), os.environ).drain(
            node, reason
        )
    except (SlurmError, OSError) as exc:
        from nodecheck.log import get_logger

        get_logger().error("slurm_action_failed", action="drain", error=str(exc))
        return "drain failed"
    return "drained"
