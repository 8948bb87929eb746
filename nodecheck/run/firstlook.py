"""A hook run's first look at the files it needs, from one child that cannot hold the hook.

The config file, the state directory and the log file may each sit on a filesystem that
stops answering (NFS, a FUSE server that died): the hook's own read would sleep in the
kernel, unkillable, and hold slurmd's job start. So before the hook touches any of them, one
detached child (nodecheck.run.isolate: none of the hook's descriptors, dies with it) reads
the config file and then stats the state directory and the log file's directory side by
side, sending each answer the moment it has it. Whatever has not answered by the deadline counts
as hung; the child is killed and left to the kernel.

The config comes back parsed (config_file.ConfigRead), so the hook never reads the file
itself; what the look learnt about the state directory is kept where every later access to
it asks (store.state), so the run does not look again.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nodecheck.run import isolate
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


def first_look(
    explicit: str | None,
    env: Mapping[str, str],
    node: str | None,
    timeout_s: float = FIRST_LOOK_TIMEOUT_S,
) -> FirstLook:
    """Read the config and look at the state and log directories it names, within
    `timeout_s`. When no child can be started, the config is read here (the system is in
    trouble, and the run will say so) and the directories are left to their own looks."""
    read_fd, write_fd = isolate.pipe()
    try:
        pid = isolate.fork_detached(keep_fd=write_fd)
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        return _without_a_child(explicit, env, node, f"cannot look at it: {exc}")
    if pid == 0:
        code = 0
        try:
            _look(write_fd, explicit, env, node)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        answers = _collect(read_fd, time.monotonic() + max(0.0, timeout_s))
    finally:
        os.close(read_fd)
    if "end" not in answers:
        os.kill(pid, signal.SIGKILL)  # ends it now, or as soon as the kernel lets go
    with contextlib.suppress(ChildProcessError):
        isolate.wait_exit(pid, 0.05)  # one stuck in the kernel is left for init to reap
    return _found(answers, explicit, env, node, timeout_s)


def _look(fd: int, explicit: str | None, env: Mapping[str, str], node: str | None) -> None:
    """In the child: each answer as soon as it is known. The two directories are looked at
    side by side, so that one on a hung filesystem does not leave the other unknown."""
    read = read_config(explicit, env)
    isolate.send_frame(fd, ("config", read))
    config = salvage_config(explicit, env, read)
    looks = []
    if node is not None:
        looks.append(("state", config.state_dir_for(node)))
    if config.log_file:
        looks.append(("log", Path(config.log_file).parent))
    sending = threading.Lock()

    def look(name: str, path: Path) -> None:
        with contextlib.suppress(OSError):  # any answer counts: the filesystem answered
            os.stat(path)
        with sending:
            isolate.send_frame(fd, (name,))

    threads = [threading.Thread(target=look, args=item, daemon=True) for item in looks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    isolate.send_frame(fd, ("end",))


def _collect(fd: int, deadline: float) -> dict[str, tuple]:
    answers: dict[str, tuple] = {}
    buffer = b""
    while "end" not in answers:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 1 << 16)
        if not chunk:  # the child died without finishing: what it did not say is unknown
            break
        frames, buffer = isolate.take_frames(buffer + chunk)
        answers.update((frame[0], frame) for frame in frames)
    return answers


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
    config = salvage_config(explicit, env, read)
    # Without a config there is no knowing where the state is: the run keeps none.
    state_dir = config.state_dir_for(node) if node is not None and not read.error else None
    state_problem = None if "state" in answers else hung
    if state_dir is not None:
        state.remember_responsive(state_dir, state_problem)
    log_dir = Path(config.log_file).parent if config.log_file else None
    log_problem = None if "log" in answers or log_dir is None else f"{log_dir}: {hung}"
    if "config" not in answers:
        log_dir, log_problem = None, f"which log file is unknown: {read.error}"
    return FirstLook(read, config, state_dir, state_problem, log_dir, log_problem)


def _without_a_child(
    explicit: str | None, env: Mapping[str, str], node: str | None, problem: str
) -> FirstLook:
    read = read_config(explicit, env)
    config = salvage_config(explicit, env, read)
    log_dir = Path(config.log_file).parent if config.log_file else None
    state_dir = config.state_dir_for(node) if node is not None else None
    problem = f"{log_dir}: {problem}" if log_dir else None
    return FirstLook(read, config, state_dir, None, log_dir, problem)
