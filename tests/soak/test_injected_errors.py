"""A bug of ours, injected into every registered check and into a check's bounded threads,
through the deployed path (the entrypoints, in-process and through the agent, the shipped
example config): every result ERROR, no FAIL, no drain, no Slurm call, exit 0 under
`on_internal_error = "pass"` (the example's), and the traceback in the log.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from nodecheck.checks import load_families
from nodecheck.checks.registry import all_checks
from tests.fixtures import healthy
from tests.fixtures.agent import start_agent

INJECT = Path(__file__).resolve().parents[1] / "fixtures" / "inject.py"
PHASES = ("prolog", "epilog", "health")


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _python_with(mode: str, where: Path) -> Path:
    """An interpreter as the entrypoints and the agent call it, with the bug put in."""
    script = where / f"python-{mode}"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -I {INJECT} {mode} "$@"\n')
    script.chmod(0o755)
    return script


def _every_check_everywhere(config: Path) -> None:
    """Every registered check on, in every hook phase (the deep ones too: the injected bug
    raises before anything is measured)."""
    load_families()
    text = config.read_text()
    on = 'enabled = true\nphases = ["prolog", "epilog", "health"]\n'
    for check_id in all_checks():
        header = f'[checks."{check_id}"]\n'
        text = text.replace(header, header + on) if header in text else f"{text}\n{header}{on}"
    config.write_text(text)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    base = tmp_path_factory.mktemp("inject")
    os.environ.setdefault("NODECHECK_PYTHON", sys.executable)
    [node] = [n for n in healthy.healthy_nodes(base, {}) if "h100" in n.config.parent.name]
    with healthy.munged(base / "munge"):
        yield node


@pytest.fixture(params=["in-process", "agent"])
def path(request, tmp_path):
    """How the hook runs: a socket with an agent behind it (started by the same injected
    interpreter), or none (the entrypoint runs in-process)."""
    sock = tmp_path / "run" / "agent.sock"
    if request.param == "in-process":
        yield request.param, sock
        return
    agents = []

    def start(python: Path) -> None:
        log = tmp_path / "agent.log"
        agents.append(start_agent([str(python), "-I", "-m", "nodecheck", "agent"], sock, log))

    yield start, sock
    for proc in agents:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def _hook(node, phase, sock, python):
    import subprocess

    env = healthy.hook_env(node, phase, sock, 4242) | {"NODECHECK_PYTHON": str(python)}
    return subprocess.run(
        [str(healthy.ENTRYPOINTS[phase])], env=env, capture_output=True, text=True,
        timeout=120, cwd="/",
    )  # fmt: skip


def _start(path, python):
    how, sock = path
    if how != "in-process":
        how(python)
    return sock


@pytest.mark.parametrize("phase", PHASES)
def test_every_check_raising_is_an_error_never_a_drain(node, path, phase, tmp_path):
    config = tmp_path / "every.toml"
    config.write_text(node.config.read_text())
    config.chmod(0o644)
    _every_check_everywhere(config)
    python = _python_with("every-check", tmp_path)
    sock = _start(path, python)
    out = _hook(node.__class__(node.name, config, node.state_dir, node.scontrol_calls), phase,
                sock, python)  # fmt: skip
    events = _events(out.stderr)
    results = [e for e in events if e.get("event") == "check_result"]
    assert out.returncode == 0, out.stderr[-2000:]
    assert {r["check"] for r in results} == set(all_checks())
    assert {r["status"] for r in results} == {"ERROR"}, [
        r for r in results if r["status"] != "ERROR"
    ]
    assert all("injected" in r["traceback"] and r["level"] == "error" for r in results)
    [verdict] = [e for e in events if e.get("event") == "verdict"]
    assert (verdict["status"], verdict["reason"], verdict["action"]) == ("ERROR", None, "none")
    assert not any(e.get("event") == "agent_unavailable" for e in events)
    assert not node.scontrol_calls.exists()


@pytest.mark.parametrize("phase", PHASES)
def test_a_bug_in_host_disks_threads_is_an_error_never_cannot_stat(node, path, phase, tmp_path):
    """The defect as it was met: the example's host.disk paths (/tmp, /dev/shm) stat'ed from
    threads, our AttributeError inside them."""
    python = _python_with("disk-probe", tmp_path)
    sock = _start(path, python)
    out = _hook(node, phase, sock, python)
    events = _events(out.stderr)
    disk = [e for e in events if e.get("event") == "check_result" and e["check"] == "host.disk"]
    assert out.returncode == 0, out.stderr[-2000:]
    assert {(d["component"], d["status"]) for d in disk} == {
        ("/tmp", "ERROR"),
        ("/dev/shm", "ERROR"),
    }
    assert all(re.search(r"AttributeError.*disk_space", d["message"]) for d in disk)
    others = [e for e in events if e.get("event") == "check_result" and e["check"] != "host.disk"]
    assert others and {e["status"] for e in others} <= {"PASS", "SKIP", "WARN"}
    [verdict] = [e for e in events if e.get("event") == "verdict"]
    assert (verdict["status"], verdict["reason"]) == ("ERROR", None)
    assert not node.scontrol_calls.exists()
