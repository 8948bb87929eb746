"""The Debian package on a clean Debian root: dpkg installs it, and the root's own slurmd
(Debian's Slurm 22.05) runs its prolog from /usr/lib/nodecheck/prolog.

`make test-deb` builds the .deb (tools/build-deb.sh) and the cached root
(tools/slurm-roots/build-root.sh) and passes them in NODECHECK_DEB and NODECHECK_DEB_ROOT;
without them (plain `make test`) this module is skipped. The scenario itself runs inside
the root (deb_scenario.py) under an overlay, so every run starts from the clean root.
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
        timeout=600,
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


def test_the_package_agent_serves_a_run_through_the_compiled_client(facts):
    agent = facts["agent"]
    assert agent["client"] and agent["client"]["executable"], agent
    assert agent["rc"] == 0, agent
    assert '"agent_unavailable"' not in agent["stderr"], agent["stderr"]
    assert '"agent_run"' in agent["log"] and '"phase": "health"' in agent["log"], agent["log"]
