"""The CLI end to end in a subprocess: what an admin and what slurmd see."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def nodecheck(args, env_extra=None, config=None):
    env = {"PATH": "/usr/bin:/bin", "SLURMD_NODENAME": "n1"}
    if config is not None:
        env["NODECHECK_CONFIG"] = str(config)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "nodecheck", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def recorder(tmp_path):
    """A fake scontrol that records every call; the healthy path must never reach it."""
    calls = tmp_path / "scontrol-calls"
    script = tmp_path / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    script.chmod(0o755)
    return script, calls


def config(tmp_path, body, scontrol="/bin/false"):
    path = tmp_path / "nodecheck.toml"
    path.write_text(
        f'log_file = "{tmp_path}/nodecheck.log"\nstate_dir = "{tmp_path}/state"\n'
        f'scontrol = "{scontrol}"\nslurm_backend = "scontrol"\ndrain_attempts = 1\n'
        f'killswitch_file = "{tmp_path}/disabled"\nmetrics_file = "{tmp_path}/nodecheck.prom"\n'
        f"{body}"
    )
    path.chmod(0o644)
    return path


def events(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def verdict_in(text):
    return next(e for e in events(text) if e["event"] == "verdict")


def test_manual_run_prints_a_table_and_json(tmp_path):
    cfg = config(tmp_path, '[checks."host.mounts"]\nrequired = ["/", "/definitely-not"]\n')
    table = nodecheck(["run"], config=cfg)
    assert table.returncode == 1
    assert "host.mounts" in table.stdout and "/definitely-not" in table.stdout
    assert "would drain with: nodecheck: host.mounts /definitely-not: not mounted" in table.stdout
    out = nodecheck(["run", "--json", "--check", "host.mounts"], config=cfg)
    doc = json.loads(out.stdout)
    assert doc["status"] == "FAIL" and doc["node"] == "n1"
    assert {r["check"] for r in doc["results"]} == {"host.mounts"}


def test_unknown_check_is_a_usage_error(tmp_path):
    out = nodecheck(["run", "--check", "gpu.nosuch*"], config=config(tmp_path, ""))
    assert out.returncode == 2 and "no check matches 'gpu.nosuch*'" in out.stderr


# Modules the healthy prolog's parent process must not load: the Slurm backend (the healthy
# path never talks to the controller), the CLI's table library (rich, which structlog would
# pull in), the metrics library and the kernel log reader (the probe children's business).
NOT_IN_HEALTHY_PARENT = (
    "nodecheck.slurm",
    "nodecheck.run.act",
    "pyslurm",
    "rich",
    "prometheus_client",
    "nodecheck.probes.kernlog",
)


def test_healthy_prolog_makes_no_slurm_call_and_loads_only_what_it_needs(tmp_path, recorder):
    scontrol, calls = recorder
    cfg = config(tmp_path, '[checks."host.mounts"]\nrequired = ["/"]\n', scontrol=scontrol)
    probe = (
        "import sys; from nodecheck.entry.cli import main; rc = main(['hook', 'prolog']); "
        f"print('LOADED', sorted(m for m in sys.modules if m.startswith({NOT_IN_HEALTHY_PARENT})));"
        "sys.exit(rc)"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "SLURMD_NODENAME": "n1",
        "SLURM_JOB_ID": "77",
        "NODECHECK_CONFIG": str(cfg),
    }
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout
    assert not calls.exists()
    verdict = verdict_in(out.stderr)
    assert verdict["status"] == "PASS" and verdict["job"] == 77  # a number in the log
    # the probes did run: their children loaded what the parent did not
    checks = {e["check"] for e in events(out.stderr) if e["event"] == "check_result"}
    assert {"host.mounts", "ib.port", "gpu.count", "gpu.xid"} <= checks


def test_failing_prolog_calls_scontrol_and_exits_nonzero(tmp_path, recorder):
    scontrol, calls = recorder
    cfg = config(tmp_path, '[checks."host.mounts"]\nrequired = ["/nope"]\n', scontrol=scontrol)
    out = nodecheck(["hook", "prolog"], {"SLURM_JOB_ID": "5"}, config=cfg)
    assert out.returncode == 1
    # this node's record (after `scontrol --help`: does this scontrol offer --json?); no
    # sinfo sits next to this scontrol, so scontrol itself reads it
    first, second = calls.read_text().splitlines()[:2]
    assert first == "--help" and second.split()[:2] == ["show", "node"]
    assert len(second.split()) == 3, second  # one node, not the table
    verdict = verdict_in((tmp_path / "nodecheck.log").read_text())
    assert verdict["reason"] == (
        "nodecheck: host.mounts /nope: not mounted [prolog job 5 sev=critical act=admin]"
    )
    assert verdict["action"] == "drain failed"  # our fake controller refuses


def test_dry_run_logs_would_drain_and_passes(tmp_path, recorder):
    scontrol, calls = recorder
    cfg = config(
        tmp_path,
        'dry_run = true\n[checks."host.mounts"]\nrequired = ["/nope"]\n',
        scontrol=scontrol,
    )
    out = nodecheck(["hook", "epilog"], {"SLURM_JOB_ID": "5"}, config=cfg)
    assert out.returncode == 0
    assert not calls.exists()
    verdict = verdict_in(out.stderr)
    assert verdict["action"] == "would drain"


def test_killswitch_file_makes_every_phase_a_logged_noop(tmp_path, recorder):
    scontrol, calls = recorder
    cfg = config(tmp_path, '[checks."host.mounts"]\nrequired = ["/nope"]\n', scontrol=scontrol)
    (tmp_path / "disabled").write_text("maintenance\n")
    for phase in ("prolog", "epilog", "health"):
        out = nodecheck(["hook", phase], config=cfg)
        assert out.returncode == 0
        assert any(e["event"] == "disabled" for e in events(out.stderr))
    assert not calls.exists()
    # the health run says so in the metrics file (no run is recorded while disabled)
    assert 'nodecheck_disabled{node="n1"} 1.0' in (tmp_path / "nodecheck.prom").read_text()


@pytest.mark.parametrize(
    ("body", "policy", "code"),
    [
        ("budget_s = 'x'\n", "pass", 0),
        ("budget_s = 'x'\non_internal_error = 'drain'\n", "drain", 1),
    ],
)
def test_broken_config_follows_on_internal_error(tmp_path, recorder, body, policy, code):
    scontrol, calls = recorder
    cfg = config(tmp_path, body, scontrol=scontrol)
    out = nodecheck(["hook", "prolog"], {"SLURM_JOB_ID": "3"}, config=cfg)
    assert out.returncode == code
    errors = [e for e in events(out.stderr) if e["event"] == "internal_error"]
    assert errors and "budget_s" in errors[0]["error"]
    assert errors[0]["on_internal_error"] == policy
    assert calls.exists() == (policy == "drain")


def test_missing_config_named_by_env_is_internal_error_not_a_drain(tmp_path, recorder):
    out = nodecheck(["hook", "prolog"], {"NODECHECK_CONFIG": str(tmp_path / "none.toml")})
    assert out.returncode == 0
    assert any(
        e["event"] == "internal_error" and "not found" in e["error"] for e in events(out.stderr)
    )


def test_hostile_node_name_in_env_is_refused_cleanly(tmp_path):
    out = nodecheck(
        ["hook", "prolog"], {"SLURMD_NODENAME": "n1;reboot"}, config=config(tmp_path, "")
    )
    assert out.returncode == 0
    assert "refusing node name" in out.stderr


def test_list_and_explain(tmp_path):
    out = nodecheck(["list", "--json"], config=config(tmp_path, ""))
    ids = {c["id"] for c in json.loads(out.stdout)["checks"]}
    assert {"host.mem", "host.disk", "host.mounts", "host.procs", "host.services"} <= ids
    exp = nodecheck(["explain", "host.procs"], config=config(tmp_path, ""))
    assert exp.returncode == 0 and "runs in: epilog" in exp.stdout and "grace_s" in exp.stdout


def test_entrypoint_scripts_hand_over_the_phase(tmp_path, recorder):
    scontrol, _ = recorder
    cfg = config(tmp_path, "", scontrol=scontrol)
    for script, phase in (
        ("prolog/nodecheck-prolog", "prolog"),
        ("epilog/nodecheck-epilog", "epilog"),
        ("health/nodecheck-health", "health"),
    ):
        env = {
            "SLURMD_NODENAME": "n1",
            "NODECHECK_CONFIG": str(cfg),
            "NODECHECK_PYTHON": sys.executable,
        }
        out = subprocess.run(
            [str(REPO / script)], env=env, capture_output=True, text=True, timeout=60, cwd="/"
        )
        assert out.returncode == 0, out.stderr
        verdict = verdict_in(out.stderr)
        assert verdict["phase"] == phase
    assert os.access(REPO / "prolog/nodecheck-prolog", os.X_OK)


def test_help_names_every_command():
    """`nodecheck --help`'s first line lists the commands an admin looks for (validate was
    left out); the internal ones (hook, validate-job) are listed below it with their help."""
    from nodecheck.entry import cli

    parser = cli._parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    first = parser.description or ""
    missing = [c for c in commands.choices if c not in first and c != "validate-job"]
    assert missing == [], first
