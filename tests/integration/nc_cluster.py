"""What the integration tests share: a base nodecheck.toml, reading nodecheck's JSON log,
waiting for drains and verdicts, and running the CLI against a test cluster.

(A module, not conftest.py: test files import it by this unique name.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MISSING_MOUNT = "/nodecheck-test-missing-mount"
PROLOG = REPO / "prolog" / "nodecheck-prolog"
EPILOG = REPO / "epilog" / "nodecheck-epilog"
HEALTH = REPO / "health" / "nodecheck-health"


def base_toml(work: Path, *, scontrol: str = "/usr/bin/scontrol", extra: str = "") -> str:
    """Settings every test cluster config starts with: logs, state and metrics under `work`
    (state and metrics per node: several slurmd share this host), a quick procs grace, no
    drain jitter."""
    return f"""
log_file = "{work}/nodecheck.log"
state_dir = "{work}/state/{{node}}"
metrics_file = "{work}/metrics/{{node}}.prom"
killswitch_file = "{work}/disabled"
scontrol = "{scontrol}"
slurm_backend = "scontrol"
budget_s = 15
# No random wait before a drain: these tests do not make waves (test_breaker_wave does).
breaker_jitter_s = 0
{extra}
[checks."host.disk"]
min_free_gib = {{ "/tmp" = 0.01 }}
[checks."host.procs"]
grace_s = 2
"""


def broken_mount_class(nodes: tuple[str, ...], phases: tuple[str, ...] = ()) -> str:
    """A node class for `nodes` whose host.mounts requires a mount that is not there (only
    in `phases`, when given): the fault the lifecycle and quarantine tests replay."""
    names = ", ".join(f'"{n}"' for n in nodes)
    listed = ", ".join(f'"{p}"' for p in phases)
    only = f"phases = [{listed}]\n" if phases else ""
    return f"""
[[node_class]]
name = "broken"
match = [{names}]
[node_class.checks."host.mounts"]
required = ["{MISSING_MOUNT}"]
{only}"""


def events(work: Path, name: str | None = None, **fields: Any) -> list[dict]:
    """nodecheck's log events, optionally only those named `name` with these field values
    (job ids are logged as numbers)."""
    log = work / "nodecheck.log"
    if not log.exists():
        return []
    want = {k: int(v) if k == "job" else v for k, v in fields.items()}
    out = []
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if (name is None or event.get("event") == name) and all(
            event.get(k) == v for k, v in want.items()
        ):
            out.append(event)
    return out


def wait_verdict(cluster, work: Path, phase: str, job: int, **fields: Any) -> dict:
    """The run's verdict line: logged last, after any drain, just before the hook exits."""
    found = cluster.wait_for(
        lambda: events(work, "verdict", phase=phase, job=job, **fields),
        30,
        message=f"{phase} verdict of job {job}",
    )
    return found[0]


def wait_drained(cluster, node: str, timeout: float) -> str:
    """Wait until `node` is drained (or draining); return its reason."""
    state = cluster.wait_for(
        lambda: (s := cluster.node_state(node))[0].startswith("drain") and s,
        timeout,
        message=f"{node} drained",
    )
    return state[1]


def nodecheck_cli(cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """`nodecheck ARGS` as an admin on a login node of this cluster would run it."""
    env = {
        "PATH": "/usr/bin:/bin",
        "SLURM_CONF": str(cluster.conf_path),
        "NODECHECK_CONFIG": str(cluster.nodecheck_config),
    }
    return subprocess.run(
        [sys.executable, "-m", "nodecheck", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def health(cluster, node: str) -> dict:
    """Run HealthCheckProgram by hand, exactly as slurmd does: no environment but the node."""
    out = subprocess.run(
        [str(cluster.health_wrapper)],
        env={"SLURMD_NODENAME": node},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Slurm ignores HealthCheckProgram's exit code; a FAIL exits 1 like the prolog would.
    assert out.returncode in (0, 1), out.stderr[-2000:]
    verdict = [json.loads(x) for x in out.stderr.splitlines() if x.startswith('{"')]
    return next(e for e in reversed(verdict) if e["event"] == "verdict")
