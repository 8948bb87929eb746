"""The CLI as people see it: tables in a terminal (through a real pty) and in a pipe, options
on either side of the subcommand, globs, exit codes, a closed pipe, the killswitch."""

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from tests.unit.test_cli import REPO, config, nodecheck

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LONG = "/scratch/" + "very-long-directory-name-" * 6  # a message far wider than 70 columns


@pytest.fixture
def failing(tmp_path):
    """host.mounts fails on two mounts (one check, two components); host.mem passes."""
    return config(tmp_path, f'[checks."host.mounts"]\nrequired = ["/", "/nope", "{LONG}"]\n')


def body_rows(stdout):
    """The table's rows: (check, component, status) of each line that has a status."""
    rows = []
    for line in stdout.splitlines():
        words = line.split()
        if len(words) >= 3 and words[2] in ("PASS", "WARN", "ERROR", "FAIL", "SKIP"):
            rows.append(tuple(words[:3]))
    return rows


def test_in_a_pipe_failures_first_no_colour_no_wrapping(failing):
    out = nodecheck(["run", "--check", "host.m*"], config=failing)
    assert out.returncode == 1
    assert not ANSI.search(out.stdout)
    statuses = [row[2] for row in body_rows(out.stdout)]
    assert statuses == ["FAIL", "FAIL", "PASS", "PASS"]  # failures first
    assert any(LONG in line and "FAIL" in line for line in out.stdout.splitlines())  # one line
    # two components of one check failed: one check
    assert "FAIL - 1 check(s) failed (2 component(s))" in out.stdout


def test_failed_shows_only_what_is_not_fine(failing):
    out = nodecheck(["run", "--failed", "--check", "host.m*"], config=failing)
    assert out.returncode == 1
    assert {row[2] for row in body_rows(out.stdout)} == {"FAIL"}
    assert "host.mem" not in out.stdout


def run_in_pty(args, cfg, columns=70):
    """`nodecheck ARGS` with stdout on a pty `columns` wide; its output as text."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {
        "PATH": "/usr/bin:/bin",
        "SLURMD_NODENAME": "n1",
        "NODECHECK_CONFIG": str(cfg),
        "TERM": "xterm-256color",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodecheck", *args],
        stdout=follower,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 1, proc.stderr.read()
    return b"".join(chunks).decode()


def test_in_a_terminal_colour_and_the_window_width(failing):
    text = run_in_pty(["run", "--check", "host.m*"], failing, columns=70)
    assert ANSI.search(text)  # coloured statuses
    plain = ANSI.sub("", text).replace("\r", "")
    table = plain.split("\n\n")[0]
    assert all(len(line) <= 70 for line in table.splitlines()), table
    assert LONG not in plain.replace("\n", "")  # the long message wrapped inside its column
    assert body_rows(plain)[0][2] == "FAIL"


def test_a_closed_pipe_is_not_a_traceback(failing):
    for args in (["list"], ["run", "--check", "host.mem"]):
        reader, writer = os.pipe()
        os.close(reader)  # `| head` that has already gone
        proc = subprocess.run(
            [sys.executable, "-m", "nodecheck", *args],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            env={
                "PATH": "/usr/bin:/bin",
                "SLURMD_NODENAME": "n1",
                "NODECHECK_CONFIG": str(failing),
            },
            cwd=REPO,
            timeout=60,
        )
        os.close(writer)
        assert proc.returncode == 141, proc.stderr
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_options_on_either_side_of_the_subcommand(tmp_path, failing):
    elsewhere = {"NODECHECK_CONFIG": str(tmp_path / "none.toml")}  # only --config can find it
    before = nodecheck(["--config", str(failing), "run", "--json"], elsewhere)
    after = nodecheck(["run", "--json", "--config", str(failing)], elsewhere)
    assert before.returncode == after.returncode == 1
    assert json.loads(before.stdout)["status"] == json.loads(after.stdout)["status"] == "FAIL"
    verbose = nodecheck(["run", "--check", "host.mem", "-v", f"--config={failing}"], elsewhere)
    assert verbose.returncode == 0 and "check_result" in verbose.stderr


def test_explain_takes_a_glob(failing):
    out = nodecheck(["explain", "host.*"], config=failing)
    assert out.returncode == 0
    explained = re.findall(r"^(host\.\w+): ", out.stdout, re.M)
    assert {"host.mem", "host.disk", "host.mounts", "host.procs", "host.services"} <= set(explained)
    missing = nodecheck(["explain", "nosuch.*"], config=failing)
    assert missing.returncode == 2 and "no check matches 'nosuch.*'" in missing.stderr


def test_help_lists_the_exit_codes():
    for args in (["--help"], ["run", "--help"]):
        out = nodecheck(args)
        assert out.returncode == 0
        codes = re.findall(r"^\s+(\d+)\s", out.stdout.split("exit codes:")[1], re.M)
        assert codes == ["0", "1", "2", "141"]


def test_a_manual_run_under_the_killswitch_says_so(tmp_path, failing):
    (tmp_path / "disabled").write_text("maintenance\n")
    out = nodecheck(["run"], config=failing)
    assert out.returncode == 2  # nothing was checked: not a clean bill of health
    assert "DISABLED - killswitch file" in out.stdout
    assert "PASS" not in out.stdout and "CHECK" not in out.stdout
    doc = json.loads(nodecheck(["run", "--json"], config=failing).stdout)
    assert doc["disabled"] is True and doc["results"] == []


def test_list_table_in_a_pipe(failing):
    out = nodecheck(["list"], config=failing)
    assert out.returncode == 0 and not ANSI.search(out.stdout)
    [mounts] = [line for line in out.stdout.splitlines() if line.startswith("host.mounts ")]
    assert mounts.split()[1:3] == ["fast", "on"]  # tier, enabled
