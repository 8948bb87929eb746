"""A local user against nodecheck, which runs as root on the same node (issue 24, item 6).

Every test makes a real user (useradd), acts as that user with setpriv (real, effective
and saved ids all the user's), and runs the real hook or CLI in a clean environment:

- a process the user names like a required daemon (its executable's name, or
  prctl(PR_SET_NAME)) never satisfies host.services;
- a state directory (or state file) the user owns or could write is refused, so a drain
  marker the user planted never resumes an admin's drain;
- a symlink the user plants as the log file, or next to the metrics file, is never
  followed by root's writes or reads.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.faults.test_hostile import hook, run_cli, write_config
from tests.fixtures import local_users
from tests.fixtures.fake_controller import fake_controller
from tests.fixtures.local_users import run_as, started_as

local_user = local_users.local_user  # fixtures: a throwaway user, a 1777 directory
world_dir = local_users.world_dir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plays a user against root")

ADMIN_REASON = "RMA 44: gpu3 replaced, KEEP DRAINED until burn-in"
# A daemon's name no real process on the test machine has (a test cluster's munged may run).
DAEMON = f"ncd{uuid.uuid4().hex[:8]}"


def assert_no_crash(out) -> None:
    """Every line on stderr is one of nodecheck's JSON lines: nothing crashed (a check's
    ERROR may carry a traceback inside its line; an uncaught exception prints outside)."""
    stray = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("{")]
    assert not stray, out.stderr[-3000:]


# ---------------------------------------------------------------- host.services


def _services_run(tmp_path: Path, users: dict[str, str] | None = None) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    owners = ""
    if users:
        owners = "users = {" + ", ".join(f'{k} = "{v}"' for k, v in users.items()) + "}\n"
    cfg = write_config(tmp_path, f'[checks."host.services"]\nrequired = ["{DAEMON}"]\n{owners}')
    env = {"SLURMD_NODENAME": "n1", "NODECHECK_CONFIG": str(cfg)}
    out = run_cli(["run", "--check", "host.services", "--json"], env)
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    [result] = json.loads(out.stdout)["results"]
    return result


def _daemon_named(where: Path, name: str) -> list[str]:
    """A program whose executable is called `name` (the kernel's comm comes from it)."""
    where.mkdir(exist_ok=True)
    where.chmod(0o755)
    binary = where / name
    shutil.copy("/bin/sleep", binary)
    binary.chmod(0o755)
    return [str(binary), "300"]


def _renamed_by_prctl(name: str) -> list[str]:
    """A process that sets its own comm (prctl PR_SET_NAME) and argv[0]."""
    code = (
        "import ctypes, time\n"
        f"ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)\n"
        "time.sleep(300)\n"
    )
    return ["/usr/bin/python3", "-c", code]


def _wait_for_comm(pid: int, name: str) -> None:
    import time

    for _ in range(100):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"process {pid} never took the name {name}")


@pytest.mark.parametrize("how", ["executable-name", "prctl"])
def test_a_users_process_named_like_a_daemon_does_not_satisfy_host_services(
    tmp_path, world_dir, local_user, how
):
    argv = (
        _daemon_named(world_dir / "bin", DAEMON)
        if how == "executable-name"
        else (_renamed_by_prctl(DAEMON))
    )
    with started_as(local_user, argv) as proc:
        _wait_for_comm(proc.pid, DAEMON)
        result = _services_run(tmp_path)
    assert result["status"] == "FAIL", result
    assert str(local_user.pw_uid) in result["message"], result["message"]


def test_the_daemon_running_as_root_or_as_the_user_the_site_names_satisfies_it(
    tmp_path, world_dir, local_user
):
    argv = _daemon_named(world_dir / "bin", DAEMON)
    with started_as(None, argv) as proc:
        _wait_for_comm(proc.pid, DAEMON)
        assert _services_run(tmp_path)["status"] == "PASS"
    # munge runs as its own user on Debian: the site says so, and only that user counts.
    with started_as(local_user, argv) as proc:
        _wait_for_comm(proc.pid, DAEMON)
        result = _services_run(tmp_path / "named", {DAEMON: local_user.pw_name})
        assert result["status"] == "PASS", result
        result = _services_run(tmp_path / "other", {DAEMON: "root"})
        assert result["status"] == "FAIL", result


# ---------------------------------------------------------------- the state directory


def _plant_marker(db: Path, reason: str) -> str:
    """What a user who can write the state directory plants: a drain marker claiming the
    admin's drain as nodecheck's own."""
    code = textwrap.dedent(
        f"""
        import json, sqlite3, time
        conn = sqlite3.connect({str(db)!r})
        conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL,"
                     " updated REAL NOT NULL)")
        marker = {{"reason": {reason!r}, "at": time.time() - 7200, "flapping": False,
                  "checks": ["gpu.ecc"]}}
        conn.execute("INSERT OR REPLACE INTO kv VALUES ('drain', ?, ?)",
                     (json.dumps(marker), time.time()))
        conn.commit()
        """
    )
    return code


def _health_with_state(tmp_path: Path, state_dir: Path) -> tuple:
    ctl = fake_controller(tmp_path / "ctl")
    ctl.set_node("n1", drained=True, reason=ADMIN_REASON, user="admin", ago_s=3600)
    cfg = write_config(tmp_path, f'state_dir = "{state_dir}"\n', ctl.scontrol)
    cfg.write_text(cfg.read_text().replace(f'state_dir = "{tmp_path}/state"\n', "", 1))
    return ctl, hook(cfg, phase="health")


def test_a_state_dir_a_user_made_is_refused_and_its_planted_marker_resumes_nothing(
    tmp_path, world_dir, local_user
):
    state_dir = world_dir / "nodecheck-state"
    run_as(local_user, ["/bin/mkdir", "-m", "0700", str(state_dir)])
    run_as(
        local_user,
        [sys.executable, "-I", "-c", _plant_marker(state_dir / "state.sqlite", ADMIN_REASON)],
    )
    ctl, out = _health_with_state(tmp_path, state_dir)
    assert_no_crash(out)
    assert not ctl.updates("n1", "RESUME"), "the admin's drain was resumed"
    assert ctl.node("n1")["reason"] == ADMIN_REASON
    refused = [e for e in out.named("check_result") if e["check"] == "nodecheck.state"]
    assert refused and refused[0]["status"] == "FAIL", out.stderr[-3000:]
    assert f"uid {local_user.pw_uid}" in refused[0]["message"]


def test_a_state_file_a_user_owns_is_refused_even_in_roots_directory(
    tmp_path, world_dir, local_user
):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    db = state_dir / "state.sqlite"
    exec(_plant_marker(db, ADMIN_REASON))  # as root, then handed to the user (chown)
    os.chown(db, local_user.pw_uid, local_user.pw_gid)
    ctl, out = _health_with_state(tmp_path, state_dir)
    assert not ctl.updates("n1", "RESUME"), "the admin's drain was resumed"
    refused = [e for e in out.named("check_result") if e["check"] == "nodecheck.state"]
    assert refused, out.stderr[-3000:]
    assert "state.sqlite" in refused[0]["message"]
    assert f"uid {local_user.pw_uid}" in refused[0]["message"]


def test_the_real_owner_and_mode_are_accepted(tmp_path):
    """The same run with the state nodecheck made itself resumes nothing it does not own
    and refuses nothing: the check above is not what keeps the admin's drain."""
    ctl, out = _health_with_state(tmp_path, tmp_path / "state")
    assert not [e for e in out.named("check_result") if e["check"] == "nodecheck.state"]
    assert not ctl.updates("n1", "RESUME")
    conn = sqlite3.connect(tmp_path / "state" / "state.sqlite")
    assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


# ---------------------------------------------------------------- log and metrics files


def _victim(tmp_path: Path) -> Path:
    """A root-only file a user would like root to write into (or read out of)."""
    victim = tmp_path / "victim"
    victim.write_text("root:secret-hash:19000:0:99999:7:::\n")
    victim.chmod(0o600)
    return victim


def test_a_log_file_symlink_a_user_planted_is_not_followed(tmp_path, world_dir, local_user):
    victim = _victim(tmp_path)
    before = victim.read_bytes()
    log_dir = world_dir / "log"
    run_as(local_user, ["/bin/mkdir", "-m", "0777", str(log_dir)])
    run_as(local_user, ["/bin/ln", "-s", str(victim), str(log_dir / "nodecheck.log")])
    cfg = write_config(tmp_path, f'log_file = "{log_dir}/nodecheck.log"\n')
    cfg.write_text(cfg.read_text().replace(f'log_file = "{tmp_path}/nodecheck.log"\n', "", 1))
    out = hook(cfg)
    assert out.rc == 0, out.stderr[-2000:]
    assert victim.read_bytes() == before, "root appended its log to the symlink's target"
    [unusable] = out.named("log_file_unusable")
    assert "symbolic link" in unusable["problem"], unusable
    assert out.verdict  # every line still reaches stderr


def test_metrics_side_files_a_user_planted_are_not_followed(tmp_path, world_dir, local_user):
    victim = _victim(tmp_path)
    before = victim.read_bytes()
    metrics_dir = world_dir / "metrics"
    run_as(local_user, ["/bin/mkdir", "-m", "0777", str(metrics_dir)])
    prom = metrics_dir / "nodecheck.prom"
    run_as(local_user, ["/bin/ln", "-s", str(victim), f"{prom}.selftest"])
    run_as(local_user, ["/bin/ln", "-s", str(victim), str(prom)])
    cfg = write_config(tmp_path, f'metrics_file = "{prom}"\n')
    text = cfg.read_text().replace(f'metrics_file = "{tmp_path}/metrics/nodecheck.prom"\n', "")
    cfg.write_text(text)
    out = hook(cfg, phase="health")
    assert_no_crash(out)
    assert victim.read_bytes() == before
    assert not prom.is_symlink() and prom.stat().st_uid == 0
    written = prom.read_text()
    assert "nodecheck_last_run" in written or "nodecheck_" in written
    assert "secret-hash" not in written, "a root-only file was copied into the metrics file"
    assert out.named("metrics_side_file_refused"), out.stderr[-3000:]


def test_a_hard_link_in_place_of_the_log_file_is_refused(tmp_path, world_dir):
    """Where protected_hardlinks is off, a user can hard-link a root-only file as the log
    file; made here by root, as such a user would."""
    victim = _victim(tmp_path)
    before = victim.read_bytes()
    log_dir = world_dir / "log"
    log_dir.mkdir(mode=0o777)
    os.link(victim, log_dir / "nodecheck.log")
    cfg = write_config(tmp_path, f'log_file = "{log_dir}/nodecheck.log"\n')
    cfg.write_text(cfg.read_text().replace(f'log_file = "{tmp_path}/nodecheck.log"\n', "", 1))
    out = hook(cfg)
    assert out.rc == 0
    assert victim.read_bytes() == before
    [unusable] = out.named("log_file_unusable")
    assert "2 hard links" in unusable["problem"], unusable
