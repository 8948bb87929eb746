"""Runs INSIDE a clean Debian root, as PID 1's child of tools/slurm-roots/in-root.sh with
NODECHECK_ROOT_OVERLAY=1 (so the cached root stays clean): installs the .deb with dpkg, as a
site would, then lets the root's own Slurm (slurmctld + 2 x slurmd, tools/testcluster.py)
run the package's prolog at /usr/lib/nodecheck/prolog, and runs its HealthCheckProgram
/usr/lib/nodecheck/health as slurmd would.

It only gathers facts, as JSON in /out/facts.json; tests/packaging/test_deb.py judges them
(so a failed step still brings back everything seen up to it). Standard library only: the
root has Debian's python3 and nothing else of ours except the package.

Usage: python3 deb_scenario.py /src/dist/nodecheck_VERSION_ARCH.deb
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, "/src/tools")
from testcluster import TestCluster  # tools/ is not a package: found by path

OUT = Path("/out/facts.json")
CLUSTER_DIR = Path("/tmp/deb-cluster")  # in-root.sh's teardown stops clusters under /tmp
LOG_FILE = Path("/var/log/nodecheck/nodecheck.log")  # the package's default log_file
MISSING_MOUNT = "/nodecheck-deb-test-missing-mount"
# The entrypoints, unit, config and snippet the package promises (README "Deploying").
PATHS = [
    "/usr/lib/nodecheck/prolog",
    "/usr/lib/nodecheck/epilog",
    "/usr/lib/nodecheck/health",
    "/usr/sbin/nodecheck",
    "/opt/nodecheck/venv/bin/python3",
    "/etc/nodecheck/nodecheck.toml",
    "/etc/logrotate.d/nodecheck",
    "/lib/systemd/system/nodecheck-agent.service",
    "/var/lib/nodecheck",
    "/var/log/nodecheck",
]
# What an admin writes into the conffile: n2 requires a mount that is not there.
SITE_CONFIG = f"""
state_dir = "/var/lib/nodecheck/{{node}}"
metrics_file = ""
slurm_backend = "scontrol"
budget_s = 15
[checks."host.disk"]
min_free_gib = {{ "/tmp" = 0.01 }}
[[node_class]]
name = "broken"
match = ["n2"]
[node_class.checks."host.mounts"]
required = ["{MISSING_MOUNT}"]
"""


# in-root.sh puts the repo on PYTHONPATH (/src); what runs from the package must not see it.
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def run(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, check=False, env=CLEAN_ENV
    )
    return {"rc": done.returncode, "out": (done.stdout + done.stderr)[-4000:]}


def path_facts(path: str) -> dict[str, Any]:
    try:
        info = os.stat(path)
    except OSError as exc:
        return {"exists": False, "error": str(exc)}
    return {
        "exists": True,
        "mode": oct(stat.S_IMODE(info.st_mode)),
        "uid": info.st_uid,
        "gid": info.st_gid,
        "is_symlink": os.path.islink(path),
        "resolves_to": os.path.realpath(path),
        "executable": os.access(path, os.X_OK) and stat.S_ISREG(info.st_mode),
    }


def log_events(job: int) -> list[dict[str, Any]]:
    if not LOG_FILE.exists():
        return []
    events = []
    for line in LOG_FILE.read_text().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if str(event.get("job")) == str(job):  # a number in the log since structlog
                events.append(event)
    return events


def gather(deb: str, facts: dict[str, Any]) -> None:
    facts["python_before"] = run(["/usr/bin/python3", "-I", "-c", "import nodecheck"])
    facts["dpkg_install"] = run(["dpkg", "-i", deb])
    if facts["dpkg_install"]["rc"] != 0:
        return
    facts["dpkg_status"] = run(["dpkg-query", "-W", "-f=${Status} ${Version}", "nodecheck"])
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "nodecheck"])["out"]
    facts["conffiles"] = [line.split()[0] for line in conffiles.splitlines() if line.strip()]
    facts["paths"] = {path: path_facts(path) for path in PATHS}
    facts["logrotate_debug"] = run(["logrotate", "--debug", "/etc/logrotate.d/nodecheck"])
    facts["cli_list"] = run(["/usr/sbin/nodecheck", "list"])

    # The admin edits the conffile; root-owned and 0644 as nodecheck demands.
    Path("/etc/nodecheck/nodecheck.toml").write_text(SITE_CONFIG)
    prolog, epilog = "/usr/lib/nodecheck/prolog", "/usr/lib/nodecheck/epilog"
    with TestCluster(CLUSTER_DIR, nodes=2, prolog=prolog, epilog=epilog) as cluster:
        facts["slurm_version"] = run(["slurmctld", "-V"])["out"].strip()
        facts["slurm_conf_hooks"] = [
            line
            for line in cluster.conf_path.read_text().splitlines()
            if line.startswith(("Prolog=", "Epilog="))
        ]
        healthy = cluster.sbatch("-w", "n1", "--wrap", "true")
        cluster.wait_for(
            lambda: cluster.job_state(healthy) in ("COMPLETED", "FAILED", ""),
            60,
            message=f"job {healthy} on n1 finished",
        )
        # The epilog's verdict comes after the job ends: wait for it in the log.
        cluster.wait_for(
            lambda: any(e.get("phase") == "epilog" for e in log_events(healthy)),
            30,
            message="the epilog's log lines",
        )
        facts["healthy"] = {
            "job": healthy,
            "job_state": cluster.job_state(healthy),
            "node": cluster.node_state("n1"),
            "events": log_events(healthy),
        }

        failing = cluster.sbatch("-w", "n2", "--wrap", "true")
        cluster.wait_for(
            lambda: cluster.node_state("n2")[0].startswith("drain"),
            60,
            message="n2 drained by the package's prolog",
        )
        # The verdict is logged last, after the drain.
        cluster.wait_for(
            lambda: any(e.get("event") == "verdict" for e in log_events(failing)),
            30,
            message="the failing prolog's verdict",
        )
        facts["failing"] = {
            "job": failing,
            "job_state": cluster.job_state(failing),
            "node": cluster.node_state("n2"),
            "events": log_events(failing),
        }
        cluster.run(["scancel", str(failing)], check=False)

        # The mount is back: HealthCheckProgram, run as slurmd runs it (no environment but
        # the node name, so the config names slurm.conf), resumes what nodecheck drained.
        Path("/etc/nodecheck/nodecheck.toml").write_text(
            f'slurm_conf = "{cluster.conf_path}"\n' + SITE_CONFIG.replace(MISSING_MOUNT, "/")
        )
        health = subprocess.run(
            ["/usr/lib/nodecheck/health"],
            env={"SLURMD_NODENAME": "n2"},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        facts["health"] = {
            "rc": health.returncode,
            "stderr": health.stderr[-3000:],
            "node": cluster.node_state("n2"),
        }
        facts["agent"] = served_by_the_agent()
    facts["state_dirs"] = {node: path_facts(f"/var/lib/nodecheck/{node}") for node in ("n1", "n2")}


def served_by_the_agent() -> dict[str, Any]:
    """The package's agent (`nodecheck agent`, as its unit starts it) serves a health run
    handed over by the package's compiled client."""
    clients = sorted(
        Path("/opt/nodecheck/venv/lib").glob("python3*/site-packages/nodecheck/entry/agent-client")
    )
    found: dict[str, Any] = {"client": path_facts(str(clients[0])) if clients else None}
    sock, log = "/run/nodecheck/agent.sock", Path("/tmp/nodecheck-agent.log")
    with log.open("w") as err:
        agent = subprocess.Popen(
            ["/usr/sbin/nodecheck", "agent", "--socket", sock],
            env=CLEAN_ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while "agent_ready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        run = subprocess.run(
            ["/usr/lib/nodecheck/health"],
            env={"SLURMD_NODENAME": "n2", "NODECHECK_AGENT_SOCKET": sock},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        found.update(rc=run.returncode, stderr=run.stderr[-3000:])
    finally:
        agent.terminate()
        agent.wait(60)
    found["log"] = log.read_text()[-3000:]
    return found


def main() -> int:
    facts: dict[str, Any] = {}
    try:
        gather(sys.argv[1], facts)
    except Exception:
        facts["error"] = traceback.format_exc()
        for log in sorted(CLUSTER_DIR.glob("log/*")):
            facts.setdefault("cluster_logs", {})[log.name] = log.read_text()[-3000:]
    OUT.write_text(json.dumps(facts, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
