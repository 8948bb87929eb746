"""A hook run's first look at the files it needs, from threads that may hang in its place.

The config file, the state directory and the log file may each sit on a filesystem that
stops answering (NFS, a FUSE server that died): a read would sleep in the kernel,
unkillable. So before the run touches any of them, one thread reads the config file and
then stats the state directory and the log file's directory side by side (one thread each),
handing over each answer the moment it has it. Whatever has not answered by the deadline
counts as hung, and its thread is left to the kernel.

A thread, not a child process: the run already happens in a child of its own, whose keeper
holds slurmd's descriptors (nodecheck.run.keeper), so a thread stuck here holds nothing of
slurmd's, and the run ends without it (keeper: the run closes its descriptors before it
exits, so the keeper does not wait for a thread that cannot end). Threads also spare the
run a fork at every job start.

The config comes back parsed (config_file.ConfigRead), so the run never reads the file
again; what the look learnt about the state directory is kept where every later access to
it asks (store.state), so the run does not look again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nodecheck.run.config import Config, salvage_config
from nodecheck.run.config_file import DEFAULT_PATH, ConfigRead, read_config
from nodecheck.store import state

# Long enough for a local disk under load, short against a prolog's budget (the look is
# part of the run's budget).
FIRST_LOOK_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class FirstLook:
    """What the look found; a problem is None when the path answered."""

    config: ConfigRead
    settings: Config  # what is valid of its top-level settings (config.salvage_config)
    state_dir: Path | None  # the state directory looked at (None: no node name to look for)
    state_dir_problem: str | None
    log_dir: Path | None  # the log file's directory (None: no log file, or unknown)
    log_dir_problem: str | None  # why the log file is not to be used, naming the path


class _Answers:
    """What the looking threads found so far; the run waits on it until "end" or its
    deadline (mutable, shared by the threads)."""

    def __init__(self) -> None:
        self.found: dict[str, tuple] = {}
        self._changed = threading.Condition()

    def give(self, name: str, *values: object) -> None:
        with self._changed:
            self.found[name] = (name, *values)
            self._changed.notify_all()

    def wait_for_end(self, deadline: float) -> dict[str, tuple]:
        with self._changed:
            while "end" not in self.found:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return dict(self.found)


def first_look(
    explicit: str | None,
    env: Mapping[str, str],
    node: str | None,
    timeout_s: float = FIRST_LOOK_TIMEOUT_S,
) -> FirstLook:
    """Read the config and look at the state and log directories it names, within
    `timeout_s`. When no thread can be started, the config is read here (the system is in
    trouble, and the run will say so) and the directories are left to their own looks."""
    answers = _Answers()
    try:
        _start(lambda: _look(answers, explicit, env, node))
    except RuntimeError as exc:  # "can't start new thread"
        return _without_a_thread(explicit, env, node, f"cannot look at it: {exc}")
    found = answers.wait_for_end(time.monotonic() + max(0.0, timeout_s))
    return _found(found, explicit, env, node, timeout_s)


def _start(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, name="first-look", daemon=True)
    thread.start()
    return thread


def _look(
    answers: _Answers, explicit: str | None, env: Mapping[str, str], node: str | None
) -> None:
    """In the looking thread: each answer as soon as it is known. The two directories are
    looked at side by side, so that one on a hung filesystem does not leave the other
    unknown."""
    try:
        _look_at_each(answers, explicit, env, node)
    finally:  # also when the look failed: what it did not say is unknown, not late
        answers.give("end")


def _look_at_each(
    answers: _Answers, explicit: str | None, env: Mapping[str, str], node: str | None
) -> None:
    read = read_config(explicit, env)
    answers.give("config", read)
    config = salvage_config(explicit, env, read)  # no I/O: the file is read already
    answers.give("settings", config)  # the run takes them as they are
    looks = []
    if node is not None:
        looks.append(("state", config.state_dir_for(node)))
    if config.log_file:
        looks.append(("log", Path(config.log_file).parent))

    def look(name: str, path: Path) -> None:
        with contextlib.suppress(OSError):  # any answer counts: the filesystem answered
            path.stat()
        # The state directory answered; whose it is decides whether it can be trusted
        # (store.state.foreign_state), asked here where a hang costs the run nothing.
        answers.give(name, state.foreign_state(path) if name == "state" else None)

    threads = [_start(lambda item=item: look(*item)) for item in looks]
    for thread in threads:
        thread.join()


def _found(
    answers: dict[str, tuple],
    explicit: str | None,
    env: Mapping[str, str],
    node: str | None,
    timeout_s: float,
) -> FirstLook:
    hung = f"no answer within {timeout_s:.1f}s (hung filesystem?)"
    if "config" in answers:
        read = answers["config"][1]
    else:
        path = Path(explicit or env.get("NODECHECK_CONFIG") or DEFAULT_PATH)
        read = ConfigRead(path, True, None, f"{path}: {hung}")
    config = (
        answers["settings"][1] if "settings" in answers else salvage_config(explicit, env, read)
    )
    # Without a config there is no knowing where the state is: the run keeps none.
    state_dir = config.state_dir_for(node) if node is not None and not read.error else None
    state_problem = answers["state"][1] if "state" in answers else hung
    if state_dir is not None:
        state.remember_responsive(state_dir, state_problem)
    log_dir = Path(config.log_file).parent if config.log_file else None
    log_problem = None if "log" in answers or log_dir is None else f"{log_dir}: {hung}"
    if "config" not in answers:
        log_dir, log_problem = None, f"which log file is unknown: {read.error}"
    return FirstLook(read, config, state_dir, state_problem, log_dir, log_problem)


def _without_a_thread(
    explicit: str | None, env: Mapping[str, str], node: str | None, problem: str
) -> FirstLook:
    read = read_config(explicit, env)
    config = salvage_config(explicit, env, read)
    log_dir = Path(config.log_file).parent if config.log_file else None
    state_dir = config.state_dir_for(node) if node is not None else None
    problem = f"{log_dir}: {problem}" if log_dir else None
    return FirstLook(read, config, state_dir, None, log_dir, problem)
