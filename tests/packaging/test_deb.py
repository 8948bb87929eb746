"""The Debian package on a clean Debian root: dpkg installs it, and the root's own slurmd
(Debian's Slurm 22.05) runs its prolog from /usr/lib/nodecheck/prolog.

`make test-deb` builds the .deb (tools/build-deb.sh) and the cached root
(tools/slurm-roots/build-root.sh) and passes them in NODECHECK_DEB and NODECHECK_DEB_ROOT;
without them (plain `make test`) this module is skipped. The scenario itself runs inside
the root (deb_scenario.py) under an overlay, so every run starts from the clean root.
systemd does not run there: the install enables the agent's unit and starts nothing; the
agent is then started as its unit says and serves slurmd's hooks; what the maintainer
scripts would ask a running systemd is read from policy-rc.d (docs/packaging.md).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEB = os.environ.get("NODECHECK_DEB", "")
ROOT = os.environ.get("NODECHECK_DEB_ROOT", "")

pytestmark = pytest.mark.skipif(
    not (DEB and ROOT),
    reason="NODECHECK_DEB / NODECHECK_DEB_ROOT not set (run `make test-deb`, root only)",
)


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    deb = Path(DEB).resolve()
    assert deb.is_file(), deb
    # The root sees the repository read-only at /src.
    inside = Path("/src") / deb.relative_to(REPO)
    out = tmp_path_factory.mktemp("deb-root-out")
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "NODECHECK_ROOT_OUT": str(out),
        "NODECHECK_ROOT_OVERLAY": "1",
    }
    done = subprocess.run(
        [
            "bash",
            str(REPO / "tools/slurm-roots/in-root.sh"),
            ROOT,
            "python3",
            "/src/tests/packaging/deb_scenario.py",
            str(inside),
        ],
        env=env,
        capture_output=True,
        text=True,
        # under qemu-user (make test-deb-arm64) every step is several times slower
        timeout=int(os.environ.get("NODECHECK_DEB_TIMEOUT_S", "600")),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads((out / "facts.json").read_text())
    assert "error" not in found, found["error"] + json.dumps(found.get("cluster_logs"), indent=1)
    return found


def test_dpkg_installs_it_on_a_root_that_had_no_nodecheck(facts):
    assert facts["python_before"]["rc"] != 0  # the root's python had no nodecheck before
    assert facts["dpkg_install"]["rc"] == 0, facts["dpkg_install"]["out"]
    assert facts["dpkg_status"]["out"].startswith("install ok installed")


def test_entrypoints_sit_at_fixed_paths_and_lead_into_the_venv(facts):
    paths = facts["paths"]
    for hook in ("prolog", "epilog", "health"):
        entry = paths[f"/usr/lib/nodecheck/{hook}"]
        assert entry["executable"], entry
        assert entry["resolves_to"] == f"/opt/nodecheck/venv/bin/nodecheck-{hook}"
    assert paths["/usr/sbin/nodecheck"]["executable"]
    assert facts["cli_list"]["rc"] == 0, facts["cli_list"]["out"]
    assert "host.mounts" in facts["cli_list"]["out"]


def test_config_and_logrotate_are_conffiles_and_state_is_root_only(facts):
    assert set(facts["conffiles"]) >= {
        "/etc/nodecheck/nodecheck.toml",
        "/etc/logrotate.d/nodecheck",
    }
    state = facts["paths"]["/var/lib/nodecheck"]
    assert (state["mode"], state["uid"], state["gid"]) == ("0o700", 0, 0)
    assert facts["paths"]["/var/log/nodecheck"]["mode"] == "0o750"
    assert facts["paths"]["/lib/systemd/system/nodecheck-agent.service"]["exists"]
    rotate = facts["logrotate_debug"]
    assert rotate["rc"] == 0, rotate["out"]
    assert "/var/log/nodecheck/*.log" in rotate["out"]


def test_slurmd_runs_the_package_prolog_on_a_healthy_node(facts):
    assert facts["slurm_conf_hooks"] == [
        "Prolog=/usr/lib/nodecheck/prolog",
        "Epilog=/usr/lib/nodecheck/epilog",
    ]
    healthy = facts["healthy"]
    assert healthy["job_state"] == "COMPLETED"
    assert healthy["node"][0] == "idle"
    verdicts = {e["phase"]: e for e in healthy["events"] if e["event"] == "verdict"}
    # The package's log_file got the run's lines, written by the package's own code.
    assert verdicts["prolog"]["status"] == "PASS"
    assert verdicts["prolog"]["node"] == "n1"
    assert verdicts["epilog"]["status"] == "PASS"


def test_a_failing_check_drains_with_nodecheck_reason(facts):
    failing = facts["failing"]
    state, reason = failing["node"]
    assert state.startswith("drain")
    assert reason.startswith(
        "nodecheck: host.mounts /nodecheck-deb-test-missing-mount: not mounted "
        f"[prolog job {failing['job']}"
    ), reason
    verdict = next(e for e in failing["events"] if e["event"] == "verdict")
    assert verdict["status"] == "FAIL"
    # The run's state went where the site's config put it, root-only.
    assert facts["state_dirs"]["n2"]["mode"] == "0o700"


def test_the_package_health_program_resumes_its_own_drain_once_fixed(facts):
    health = facts["health"]
    assert health["rc"] == 0, health["stderr"]
    state, reason = health["node"]
    assert not state.startswith("drain"), (state, reason)
    lines = [json.loads(x) for x in health["stderr"].splitlines() if x.startswith("{")]
    resume = [e for e in lines if e["event"] == "resume"]
    assert [e["result"] for e in resume] == ["resumed"], health["stderr"]


UNIT = "nodecheck-agent.service"


def test_install_without_systemd_enables_the_agent_and_starts_nothing(facts):
    # The root is a chroot as far as the maintainer scripts can tell: no running systemd.
    assert facts["systemd"] == {"run_systemd_system": False, "pid1": "bash"}, facts["systemd"]
    out = facts["dpkg_install"]["out"]
    assert "systemctl" not in out and "policy-rc.d" not in out, out
    # postinst ran the selftest on the installed node: every enabled check caught its canary.
    assert "selftest OK:" in out and "selftest found checks" not in out, out
    after = facts["after_install"]
    # postinst's deb-systemd-helper enabled the unit (works without systemd) ...
    assert after["wants"] == {
        "is_symlink": True,
        "link": f"/lib/systemd/system/{UNIT}",
        "exists": True,
    }, after
    assert after["dsh_state"], "deb-systemd-helper keeps no record: purge would not disable it"
    # ... and started nothing: no systemd to start it.
    assert not after["socket"] and after["agents"] == [], after


def test_the_agent_its_unit_starts_serves_slurmds_prolog_and_epilog(facts):
    agent = facts["agent"]
    service = agent["service"]
    # The unit runs the package's venv and listens where the entrypoints look by themselves
    # (no --socket): /run/nodecheck, its RuntimeDirectory, root only.
    assert service["ExecStart"] == "/opt/nodecheck/venv/bin/python3 -I -m nodecheck agent"
    assert (service["RuntimeDirectory"], service["RuntimeDirectoryMode"]) == ("nodecheck", "0700")
    assert service["Restart"] == "always"  # it exits by itself after an upgrade on disk
    assert agent["socket_dir"]["mode"] == "0o700" and agent["socket"]["mode"] == "0o600", agent
    assert agent["client"] and agent["client"]["executable"], agent
    log = agent["log"]
    assert [e["event"] for e in log if e["event"] != "agent_run"] == [
        "agent_ready",
        "agent_stopped",
    ], log
    # slurmd's prolog and epilog of the job, and HealthCheckProgram, went through the agent.
    served = {(e["phase"], e["job"]) for e in log if e["event"] == "agent_run"}
    assert served == {("prolog", agent["job"]), ("epilog", agent["job"]), ("health", None)}, log
    events = agent["events"]
    assert not [e for e in events if e["event"] == "agent_unavailable"], events
    verdicts = {e["phase"]: e["status"] for e in events if e["event"] == "verdict"}
    assert verdicts == {"prolog": "PASS", "epilog": "PASS"}, events
    assert agent["health"]["rc"] == 0, agent["health"]["stderr"]
    assert '"agent_unavailable"' not in agent["health"]["stderr"], agent["health"]["stderr"]
    # Stopped as systemd stops it: the socket goes with it, new runs go in-process.
    assert agent["stopped_rc"] == 0 and not agent["socket_after_stop"], agent


def test_an_admins_disable_survives_an_upgrade_and_purge_forgets_the_unit(facts):
    life = facts["lifecycle"]
    assert facts["after_install"]["wants"]["is_symlink"]  # enabled by the package first
    # `systemctl disable nodecheck-agent` (here: its symlink removed), then an upgrade.
    upgrade = life["upgrade_after_disable"]
    assert upgrade["rc"] == 0, upgrade["out"]
    assert not upgrade["wants"]["exists"], upgrade
    purge = life["purge"]
    assert purge["rc"] == 0, purge["out"]
    assert not purge["wants"]["exists"] and not purge["dsh_state"], purge
    assert not purge["unit_file"], purge


def test_with_systemd_the_scripts_start_restart_stop_and_disable_the_agent(facts):
    """What the maintainer scripts ask a running systemd, through policy-rc.d (which said
    no: there is none in the root)."""
    life = facts["lifecycle"]
    assert life["with_systemd"]["run_systemd_system"], life["with_systemd"]
    steps = ["install", "upgrade", "remove", "purge"]
    for step in steps:
        assert life[f"{step}_with_systemd"]["rc"] == 0, life[f"{step}_with_systemd"]["out"]
    asked = {step: life[f"{step}_with_systemd"]["asked"] for step in steps}
    # Started on install; restarted on upgrade so that the new code serves (not stopped
    # before the unpack: it serves until then); stopped on removal; nothing more on purge.
    assert asked == {
        "install": [f"{UNIT} start"],
        "upgrade": [f"{UNIT} restart"],
        "remove": [f"{UNIT} stop"],
        "purge": [],
    }, asked
    # After a purge the package enables it again (it forgot the earlier disable);
    # removal keeps the enablement, as it keeps the conffiles; purge disables it.
    assert life["install_with_systemd"]["wants"]["is_symlink"], life["install_with_systemd"]
    removed = life["remove_with_systemd"]
    assert removed["wants"]["is_symlink"] and not removed["unit_file"], removed
    purged = life["purge_with_systemd"]
    assert not purged["wants"]["exists"] and not purged["dsh_state"], purged
