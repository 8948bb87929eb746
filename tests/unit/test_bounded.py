"""core/bounded's program runner: what a program that ends, one killed at its deadline, and
one that cannot be waited for (a grandchild outside its session holds its pipes, as a
program asleep in the kernel would) give back, and how long each takes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodecheck.core import bounded

ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.fixture
def escaped(tmp_path):
    """A pid file for a grandchild that leaves the session; killed after the test."""
    pidfile = tmp_path / "escaped.pid"
    yield pidfile
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def holds_the_pipes(pidfile: Path) -> str:
    """Prints, then starts a `sleep` in a session of its own that keeps stdout and stderr
    open after its parent is killed, then sleeps itself."""
    return (
        "import subprocess, sys, time\n"
        "print('started', flush=True)\n"
        "child = subprocess.Popen(['sleep', '30'], start_new_session=True)\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(30)\n"
    )


def test_run_command_returns_what_the_program_wrote():
    done = bounded.run_command(
        python("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"), 10, ENV
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


def test_run_command_raises_at_the_deadline():
    began = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        bounded.run_command(["sleep", "30"], 0.5, ENV)
    assert time.monotonic() - began < 5


def test_run_command_that_cannot_start_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        bounded.run_command([str(tmp_path / "missing")], 1, ENV)


def test_a_killed_program_gives_back_what_it_wrote_before_the_deadline():
    code = "import time\nprint('started', flush=True)\ntime.sleep(30)\n"
    ran = bounded.collect(bounded.start(python(code), ENV), 1.0)
    assert ran == bounded.Ran(None, "started\n", "")


def test_a_program_whose_pipes_stay_open_is_left_behind_at_the_deadline(escaped):
    proc = bounded.start(python(holds_the_pipes(escaped)), ENV, own_session=True)
    began = time.monotonic()
    ran = bounded.collect(proc, 1.5, kill_session=True, grace_s=0.2)
    assert time.monotonic() - began < 5  # not the 30 s the escaped grandchild holds on
    assert ran.returncode is None
    assert ran.stdout == "started\n"  # read before the deadline, decoded as text
    assert proc.stdout is not None and proc.stdout.closed


def test_killing_the_session_kills_the_programs_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = (
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '30'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(30)\n"
    )
    ran = bounded.collect(
        bounded.start(python(code), ENV, own_session=True), 1.5, kill_session=True
    )
    assert ran.returncode is None
    child = int(pidfile.read_text())
    for _ in range(50):  # killed with the session; reaped by init
        if not Path(f"/proc/{child}").exists():
            break
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/stat").read_text().split(") ")[1].startswith("Z"):
                break
        time.sleep(0.1)
    else:
        pytest.fail("the child outlived its session's kill")


def test_undecodable_output_is_replaced_when_asked():
    code = "import sys; sys.stdout.buffer.write(b'ok \\xff\\n')"
    ran = bounded.collect(bounded.start(python(code), ENV, errors="replace"), 10)
    assert ran == bounded.Ran(0, "ok \ufffd\n", "")
