"""The node's clock stepped or off, end to end (issue 24, item 7).

The real hook runs with its wall clock shifted and its boot clock untouched: what an NTP
step, a hand-set clock or a flat RTC battery does to a node. The shift is an LD_PRELOAD:
tests/fixtures/clockshift.c (compiled here), and for the first case also libfaketime
(`apt-get install faketime`) with FAKETIME_DONT_FAKE_MONOTONIC, where its own bug allows
(it shifts clock_nanosleep's absolute monotonic deadlines too, so any time.sleep() of the
hook fails with EINVAL). The controller (tests/fixtures/fake_controller) keeps the real
time: nodecheck runs scontrol with a clean environment, so the shift never reaches it, as
it never reaches a slurmctld on another host.

- a clock stepped back an hour after a drain: the passes after it still count, and the
  node is resumed after resume_after_passes of them;
- a node 60 s ahead of the controller: Slurm's "Prolog error" drain that followed its
  failure (the controller was down) is still adopted;
- a node whose clock jumped an hour ahead: the breaker's rate window still counts the
  drains of the last minutes (their slots end by the controller's clock), and holds the
  drain that would exceed it.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.faults.test_hostile import hook
from tests.fixtures.fake_controller import FakeController, fake_controller

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SHIM_SOURCE = Path(__file__).resolve().parents[1] / "fixtures" / "clockshift.c"
FAILING = '[checks."host.mounts"]\nrequired = ["/nodecheck-missing"]\n'


@pytest.fixture(scope="session")
def clockshift(tmp_path_factory) -> Path:
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler for the clock shim")
    lib = tmp_path_factory.mktemp("clockshift") / "clockshift.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(lib), str(SHIM_SOURCE), "-ldl"],
        check=True,
    )
    return lib


def shifted(shim: Path, seconds: float) -> dict[str, str]:
    """The environment that runs a program with its wall clock `seconds` off and its
    monotonic and boot clocks as they are."""
    return {"LD_PRELOAD": str(shim), "NC_CLOCK_SHIFT_S": str(seconds)}


def faketime(offset: str) -> dict[str, str]:
    """The same through libfaketime ("-1h", "+60s")."""
    if not LIBFAKETIME.exists():
        pytest.skip("libfaketime not installed (apt-get install faketime)")
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


def _config(tmp_path: Path, ctl: FakeController, failing: bool, extra: str = "") -> Path:
    cfg = tmp_path / "nodecheck.toml"
    cfg.write_text(
        f'state_dir = "{tmp_path}/state"\n'
        f'state_fallback_dir = "{tmp_path}/unsaved"\n'
        f'log_file = "{tmp_path}/nodecheck.log"\n'
        f'metrics_file = "{tmp_path}/metrics/nodecheck.prom"\n'
        f'killswitch_file = "{tmp_path}/disabled"\n'
        f'scontrol = "{ctl.scontrol}"\n'
        'slurm_backend = "scontrol"\n'
        "drain_attempts = 1\n"
        "breaker_jitter_s = 0\n"
        f"{textwrap.dedent(extra)}" + (FAILING if failing else "")
    )
    cfg.chmod(0o644)
    return cfg


@pytest.mark.parametrize("tool", ["shim", "libfaketime"])
def test_the_shift_moves_the_wall_clock_only(clockshift, tool):
    """The tools themselves: the hook's python sees its wall clock an hour back, its boot
    clock as it is."""
    import sys
    import time

    env = shifted(clockshift, -3600) if tool == "shim" else faketime("-1h")
    code = "import time; print(time.time(), time.clock_gettime(time.CLOCK_BOOTTIME))"
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], env=env, capture_output=True, text=True, check=True
    )
    wall, boot = map(float, out.stdout.split())
    assert abs(time.time() - 3600 - wall) < 5
    assert abs(time.clock_gettime(time.CLOCK_BOOTTIME) - boot) < 5


@pytest.mark.parametrize("tool", ["shim", "libfaketime"])
def test_passes_after_the_clock_stepped_back_count_and_the_node_is_resumed(
    tmp_path, clockshift, tool
):
    back = shifted(clockshift, -3600) if tool == "shim" else faketime("-1h")
    ctl = fake_controller(tmp_path / "ctl")
    extra = "resume_after_passes = 2\n"
    drained = hook(_config(tmp_path, ctl, failing=True, extra=extra), phase="health")
    assert len(ctl.updates("n1", "DRAIN")) == 1, drained.stderr[-2000:]
    # NTP steps the node's clock back an hour; the node is fixed.
    cfg = _config(tmp_path, ctl, failing=False, extra=extra)
    first = hook(cfg, phase="health", env_extra=back)
    assert first.verdict["action"] == "passed 1/2 before resume", first.verdict
    assert not ctl.updates("n1", "RESUME")
    second = hook(cfg, phase="health", env_extra=back)
    assert second.verdict["action"] == "resumed", second.stderr[-3000:]
    assert ctl.updates("n1", "RESUME") and not ctl.node("n1")["reason"]
    # The history rows do carry the stepped clock: the fix counts rows, not times.
    conn = sqlite3.connect(tmp_path / "state" / "state.sqlite")
    ats = [at for (at,) in conn.execute("SELECT at FROM runs ORDER BY id")]
    assert ats[1] < ats[0] - 3000, ats


def test_slurms_prolog_error_drain_is_adopted_with_the_node_60s_ahead(tmp_path, clockshift):
    ctl = fake_controller(tmp_path / "ctl")
    ahead = shifted(clockshift, 60)
    ctl.set(down=True)  # the controller does not answer during the failing prolog
    cfg = _config(tmp_path, ctl, failing=True, extra="budget_s = 4\n")
    failed = hook(cfg, phase="prolog", env_extra=ahead)
    assert failed.rc == 1 and failed.verdict["action"] == "drain failed", failed.stderr[-2000:]
    # slurmctld is back and drains the node for the prolog's exit code, by its own clock.
    ctl.set(down=False)
    ctl.set_node("n1", drained=True, reason="Prolog error", user="slurm")
    health = hook(_config(tmp_path, ctl, failing=False), phase="health", env_extra=ahead)
    adopted = ctl.updates("n1", "DRAIN")
    assert adopted, health.stderr[-3000:]
    assert ctl.node("n1")["reason"].startswith("nodecheck: host.mounts /nodecheck-missing")
    assert health.named("slurm_drain_adopted")


def test_the_breaker_rate_window_holds_with_the_node_clock_an_hour_ahead(tmp_path, clockshift):
    nodes = ("n1", "n2", "n3", "n4", "n5")
    ctl = fake_controller(tmp_path / "ctl", nodes)
    for k, name in enumerate(("n2", "n3")):  # drained by nodecheck a minute ago, by the
        # controller's clock, each holding a breaker slot that ends by that clock
        reason = f"nodecheck: gpu.ecc gpu0: 2 uncorrectable ECC errors [prolog job 7{name[1]}]"
        ctl.set_node(name, drained=True, reason=reason, ago_s=60)
        ctl.claim(f"nodecheck_breaker_{k}", name, ago_s=60)
    extra = "breaker_max_share = 0\nbreaker_max_drains = 2\nbreaker_window_min = 10\n"
    cfg = _config(tmp_path, ctl, failing=True, extra=extra)
    out = hook(cfg, phase="prolog", env_extra=shifted(clockshift, 3600))
    assert not ctl.updates("n1", "DRAIN"), "a third drain within the window went through"
    assert out.rc == 0 and out.verdict["action"] == "breaker open", out.stderr[-3000:]
    [held] = out.named("circuit_breaker_open")
    assert "2 nodes drained by nodecheck in the last 10 min" in held["why"]


def test_the_same_breaker_case_with_both_clocks_agreeing_is_the_control(tmp_path):
    """Without the shift the breaker holds the same drain: the shift is all that differs."""
    nodes = ("n1", "n2", "n3", "n4", "n5")
    ctl = fake_controller(tmp_path / "ctl", nodes)
    for k, name in enumerate(("n2", "n3")):
        reason = f"nodecheck: gpu.ecc gpu0: 2 uncorrectable ECC errors [prolog job 7{name[1]}]"
        ctl.set_node(name, drained=True, reason=reason, ago_s=60)
        ctl.claim(f"nodecheck_breaker_{k}", name, ago_s=60)
    extra = "breaker_max_share = 0\nbreaker_max_drains = 2\nbreaker_window_min = 10\n"
    out = hook(_config(tmp_path, ctl, failing=True, extra=extra), phase="prolog")
    assert not ctl.updates("n1", "DRAIN") and out.verdict["action"] == "breaker open"
