"""A drain made while the state directory was read-only or full (issue 24, item 8).

The state directory is a real tmpfs the test mounts: filled up (a full /var), or
remounted read-only (a filesystem the kernel turned read-only after an error). A health
run drains the node through a controller that remembers (tests/fixtures/fake_controller),
its record fails, and then the filesystem comes back. Promised: the failure is said (a log
line with what to do, the metrics file, `nodecheck report`), and the next health run once
the state is writable records the drain and resumes it as usual; the unsaved record is
then gone.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.test_hostile import hook, run_cli, tmpfs
from tests.fixtures.fake_controller import FakeController, fake_controller

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")

FAILING = '[checks."host.mounts"]\nrequired = ["/nodecheck-missing"]\n'


def _config(tmp_path: Path, state_dir: Path, ctl: FakeController, failing: bool) -> Path:
    cfg = tmp_path / "nodecheck.toml"
    cfg.write_text(
        f'state_dir = "{state_dir}"\n'
        f'state_fallback_dir = "{tmp_path}/unsaved"\n'
        f'log_file = "{tmp_path}/nodecheck.log"\n'
        f'metrics_file = "{tmp_path}/metrics/nodecheck.prom"\n'
        f'killswitch_file = "{tmp_path}/disabled"\n'
        f'scontrol = "{ctl.scontrol}"\n'
        'slurm_backend = "scontrol"\n'
        "drain_attempts = 1\n"
        "breaker_jitter_s = 0\n" + (FAILING if failing else "")
    )
    cfg.chmod(0o644)
    return cfg


def _fill(mnt: Path) -> Path:
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def _remount(mnt: Path, how: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{how}", str(mnt)], check=True)


@pytest.fixture
def state_fs(tmp_path) -> Iterator[Path]:
    with tmpfs(tmp_path / "statefs", "size=1m,mode=755") as mnt:
        yield mnt


def _metric(tmp_path: Path, name: str) -> str | None:
    prom = tmp_path / "metrics" / "nodecheck.prom"
    for line in prom.read_text().splitlines() if prom.exists() else ():
        if line.startswith(f'{name}{{node="n1"}}'):
            return line.split()[-1]
    return None


def _marker(state_dir: Path) -> object:
    conn = sqlite3.connect(f"file:{state_dir / 'state.sqlite'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM kv WHERE key = 'drain'").fetchone()
    finally:
        conn.close()
    return json.loads(row[0]) if row else None


@pytest.mark.parametrize("trouble", ["full", "read-only"])
def test_a_drain_made_while_the_state_could_not_be_written_is_said_and_resumed_later(
    tmp_path, state_fs, trouble
):
    ctl = fake_controller(tmp_path / "ctl")
    state_dir = state_fs / "state"
    # The node's state as a node has it: made by an earlier healthy run.
    first = hook(_config(tmp_path, state_dir, ctl, failing=False), phase="health")
    assert first.rc == 0 and (state_dir / "state.sqlite").exists(), first.stderr[-2000:]

    filler = _fill(state_fs) if trouble == "full" else None
    if trouble == "read-only":
        _remount(state_fs, "ro")
    cfg = _config(tmp_path, state_dir, ctl, failing=True)
    out = hook(cfg, phase="health")
    [drain] = ctl.updates("n1", "DRAIN")
    reason = ctl.node("n1")["reason"]
    assert reason.startswith("nodecheck: host.mounts"), reason
    [said] = out.named("state_not_saved")
    assert said["level"] == "error" and "writable" in said["what_now"], said
    kept = Path(said["kept_in"])
    assert kept.exists() and kept.parent == tmp_path / "unsaved"
    assert _metric(tmp_path, "nodecheck_state_unsaved") == "1.0"
    report = run_cli(["report", "--json"], {"NODECHECK_CONFIG": str(cfg)})
    [row] = json.loads(report.stdout)["state_unsaved"]
    assert row["node"] == "n1" and row["drain_reason"] == reason

    # A second run meanwhile (the node still broken) keeps the drain, and what is kept.
    again = hook(cfg, phase="health")
    assert len(ctl.updates("n1", "DRAIN")) == 1, again.stderr[-2000:]
    assert kept.exists()

    # The filesystem comes back; the node is fixed.
    if filler is not None:
        filler.unlink()
    else:
        _remount(state_fs, "rw")
    healed = hook(_config(tmp_path, state_dir, ctl, failing=False), phase="health")
    assert ctl.updates("n1", "RESUME"), healed.stderr[-3000:]
    assert not ctl.node("n1")["reason"]
    assert healed.named("state_saved_late")
    assert not kept.exists()
    assert _marker(state_dir) is None  # recorded, then cleared by the resume
    assert _metric(tmp_path, "nodecheck_state_unsaved") == "0.0"
    assert drain  # the one drain of the episode


def test_a_planted_unsaved_file_is_refused(tmp_path):
    """The unsaved file decides resumes as the state does: one someone else could write is
    never read (here: a fallback directory others may write)."""
    ctl = fake_controller(tmp_path / "ctl")
    ctl.set_node("n1", drained=True, reason="RMA 7: keep drained", user="admin")
    fallback = tmp_path / "unsaved"
    fallback.mkdir(mode=0o777)
    fallback.chmod(0o777)
    planted = {
        "id": "x",
        "node": "n1",
        "since": 0,
        "state_dir": "",
        "error": "",
        "writes": [{"key": "drain", "value": {"reason": "RMA 7: keep drained", "at": 0}}],
    }
    (fallback / "n1.json").write_text(json.dumps(planted))
    out = hook(_config(tmp_path, tmp_path / "state", ctl, failing=False), phase="health")
    assert not ctl.updates("n1", "RESUME"), out.stderr[-3000:]
    assert out.named("unsaved_state_refused")
