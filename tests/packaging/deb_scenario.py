"""Runs INSIDE a clean Debian root, as PID 1's child of tools/slurm-roots/in-root.sh with
NODECHECK_ROOT_OVERLAY=1 (so the cached root stays clean): installs the .deb with dpkg, as a
site would, then lets the root's own Slurm (slurmctld + 2 x slurmd, tools/testcluster.py)
run the package's prolog at /usr/lib/nodecheck/prolog, and runs its HealthCheckProgram
/usr/lib/nodecheck/health as slurmd would. Then the agent, as its unit starts it, serves
slurmd's prolog and epilog, and the package goes through upgrade, removal and purge.

systemd does not run in the root (PID 1 is in-root.sh's shell, no /run/systemd/system), as in
a chroot or an image build: the maintainer scripts must install cleanly there, enabling the
agent's unit (deb-systemd-helper's symlink) without starting anything. What they would ask a
running systemd is seen, at the end, through the root's /usr/sbin/policy-rc.d.

It only gathers facts, as JSON in /out/facts.json; tests/packaging/test_deb.py judges them
(so a failed step still brings back everything seen up to it). Standard library only: the
root has Debian's python3 and nothing else of ours except the package.

Usage: python3 deb_scenario.py /src/dist/nodecheck_VERSION_ARCH.deb
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
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
UNIT = "nodecheck-agent.service"
UNIT_FILE = f"/lib/systemd/system/{UNIT}"
# What `systemctl enable` (and deb-systemd-helper enable) makes for WantedBy=multi-user.target.
WANTS = f"/etc/systemd/system/multi-user.target.wants/{UNIT}"
# deb-systemd-helper's record of what it enabled (purge removes what is listed there).
DSH_STATE = f"/var/lib/systemd/deb-systemd-helper-enabled/{UNIT}.dsh-also"
SOCKET = "/run/nodecheck/agent.sock"  # the entrypoints' default (docs/agent.md)
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


def link_facts(path: str) -> dict[str, Any]:
    """A symlink as it is, dangling or not."""
    return {
        "is_symlink": os.path.islink(path),
        "link": os.readlink(path) if os.path.islink(path) else None,
        "exists": os.path.lexists(path),
    }


def agent_processes() -> list[str]:
    """Command lines of running `nodecheck agent` processes."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"nodecheck" in argv and b"agent" in argv:
            found.append(" ".join(a.decode(errors="replace") for a in argv if a))
    return found


def systemd_facts() -> dict[str, Any]:
    """How the maintainer scripts tell whether systemd runs, and what PID 1 is."""
    return {
        "run_systemd_system": os.path.isdir("/run/systemd/system"),
        "pid1": Path("/proc/1/comm").read_text().strip(),
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
    facts["systemd"] = systemd_facts()
    facts["dpkg_install"] = run(["dpkg", "-i", deb])
    if facts["dpkg_install"]["rc"] != 0:
        return
    # postinst enabled the unit (no systemd needed for that) and started nothing.
    facts["after_install"] = {
        "wants": link_facts(WANTS),
        "dsh_state": os.path.exists(DSH_STATE),
        "socket": os.path.exists(SOCKET),
        "agents": agent_processes(),
    }
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
        facts["agent"] = served_by_the_agent(cluster)
    facts["state_dirs"] = {node: path_facts(f"/var/lib/nodecheck/{node}") for node in ("n1", "n2")}
    facts["lifecycle"] = lifecycle(deb)


def unit_service(path: str) -> dict[str, str]:
    """The [Service] settings of a unit file (the last of a repeated key wins)."""
    settings: dict[str, str] = {}
    section = ""
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def served_by_the_agent(cluster: TestCluster) -> dict[str, Any]:
    """The agent as the package's unit starts it (its ExecStart, in the RuntimeDirectory
    systemd would make; no systemd here) serves the prolog and epilog that slurmd runs, and
    a HealthCheckProgram run, all through the package's compiled client at the default
    socket. Then it is stopped as systemd stops it (SIGTERM to the main process)."""
    clients = sorted(
        Path("/opt/nodecheck/venv/lib").glob("python3*/site-packages/nodecheck/entry/agent-client")
    )
    service = unit_service(UNIT_FILE)
    found: dict[str, Any] = {
        "client": path_facts(str(clients[0])) if clients else None,
        "service": service,
    }
    argv = shlex.split(service["ExecStart"])
    if argv[0][:1] in ("-", "@", "+", "!", ":"):
        raise RuntimeError(f"ExecStart prefix the scenario does not handle: {argv[0]}")
    for name in service.get("RuntimeDirectory", "").split():
        runtime = Path("/run") / name
        runtime.mkdir()
        runtime.chmod(int(service.get("RuntimeDirectoryMode", "0755"), 8))
    log = Path("/tmp/nodecheck-agent.log")
    with log.open("w") as err:
        agent = subprocess.Popen(
            argv,
            env=CLEAN_ENV,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while "agent_ready" not in log.read_text() and time.monotonic() < deadline:
            if agent.poll() is not None:
                break
            time.sleep(0.1)
        found["socket"] = path_facts(SOCKET)
        found["socket_dir"] = path_facts(os.path.dirname(SOCKET))
        job = cluster.sbatch("-w", "n1", "--wrap", "true")
        cluster.wait_for(
            lambda: any(e.get("phase") == "epilog" for e in log_events(job)),
            60,
            message=f"the epilog's log lines of job {job} (agent)",
        )
        found["job"] = job
        found["job_state"] = cluster.job_state(job)
        found["events"] = log_events(job)
        # HealthCheckProgram as slurmd runs it: no environment but the node name.
        health = subprocess.run(
            ["/usr/lib/nodecheck/health"],
            env={"SLURMD_NODENAME": "n2"},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        found["health"] = {"rc": health.returncode, "stderr": health.stderr[-3000:]}
    finally:
        agent.terminate()  # KillMode=mixed: SIGTERM to the main process
        found["stopped_rc"] = agent.wait(60)
    found["socket_after_stop"] = os.path.exists(SOCKET)
    found["log"] = json_lines(log.read_text())
    return found


def lifecycle(deb: str) -> dict[str, Any]:
    """Upgrade, removal and purge. First without systemd (an admin's disable survives an
    upgrade; purge forgets the unit), then as if systemd ran: /run/systemd/system is there
    (the maintainer scripts' test for a running systemd) and the root's policy-rc.d, which
    deb-systemd-invoke asks before every start, stop or restart, records the request and
    answers 101 (do not run it: there is no systemd to do it)."""
    steps: dict[str, Any] = {}

    def step(name: str, argv: list[str], asked: Path | None = None) -> None:
        if asked:
            asked.write_text("")
        steps[name] = run(argv)
        steps[name]["wants"] = link_facts(WANTS)
        steps[name]["dsh_state"] = os.path.exists(DSH_STATE)
        steps[name]["unit_file"] = os.path.exists(UNIT_FILE)
        if asked:
            steps[name]["asked"] = asked.read_text().splitlines()

    steps["systemd"] = systemd_facts()
    # The admin opts out as `systemctl disable nodecheck-agent` does: the symlink goes.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(WANTS)
    step("upgrade_after_disable", ["dpkg", "-i", deb])
    step("purge", ["dpkg", "-P", "nodecheck"])

    policy = Path("/usr/sbin/policy-rc.d")
    saved = policy.read_bytes() if policy.exists() else None
    asked = Path("/tmp/policy-rc.d.asked")
    Path("/run/systemd/system").mkdir(parents=True)
    policy.write_text(f'#!/bin/sh\necho "$*" >> {asked}\nexit 101\n')
    policy.chmod(0o755)
    try:
        steps["with_systemd"] = systemd_facts()
        step("install_with_systemd", ["dpkg", "-i", deb], asked)
        step("upgrade_with_systemd", ["dpkg", "-i", deb], asked)
        step("remove_with_systemd", ["dpkg", "-r", "nodecheck"], asked)
        step("purge_with_systemd", ["dpkg", "-P", "nodecheck"], asked)
    finally:
        Path("/run/systemd/system").rmdir()
        if saved is None:
            policy.unlink()
        else:
            policy.write_bytes(saved)
    return steps


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
