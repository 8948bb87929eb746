"""Our failure is never the hardware's (nodecheck/checks/boundary.py).

A FAIL comes only from what the node said (an errno, an NVML error, a deadline); anything
our own code raises, in a whole check or inside one of its per-component paths, is an
ERROR with its traceback, never a FAIL and never in a drain reason.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import make_ctx, options_of

from nodecheck.checks import boundary
from nodecheck.checks.registry import all_checks
from nodecheck.core.results import CheckResult, Status
from nodecheck.run.decide import decide

REPO = Path(__file__).resolve().parents[2]


def test_an_errno_is_the_os_speaking_anything_else_is_ours():
    assert boundary.said_by_os(OSError(errno.EIO, "Input/output error"))
    assert boundary.said_by_os(FileNotFoundError(errno.ENOENT, "gone"))
    assert not boundary.said_by_os(OSError("made by Python code, no errno"))
    assert not boundary.said_by_os(AttributeError("module 'x' has no attribute 'disk_space'"))

    eio = boundary.failure_or_internal("host.disk", "/tmp", OSError(errno.EIO, "I/O"), "stat")
    assert (eio.status, eio.message, eio.traceback) == (Status.FAIL, "stat: I/O", "")
    try:
        raise AttributeError("module 'nodecheck.probes.host' has no attribute 'disk_space'")
    except AttributeError as exc:
        ours = boundary.failure_or_internal("host.disk", "/dev/shm", exc, "cannot stat")
    assert (ours.status, ours.component) == (Status.ERROR, "/dev/shm")
    assert ours.message.startswith("internal error: AttributeError:")
    assert "test_boundary.py" in ours.traceback and "raise AttributeError" in ours.traceback


def test_one_components_bug_leaves_the_others_judged():
    def judge(gpu: int) -> list[CheckResult]:
        if gpu == 5:
            raise KeyError("clocks_event_reasons")
        status = Status.FAIL if gpu == 3 else Status.PASS
        return [CheckResult("gpu.t", status, "judged", f"gpu{gpu}")]

    results = list(boundary.per_component("gpu.t", range(8), lambda g: f"gpu{g}", judge))
    by = {r.component: r.status for r in results}
    assert by["gpu3"] is Status.FAIL and by["gpu5"] is Status.ERROR
    assert sum(s is Status.PASS for s in by.values()) == 6


def test_errors_never_reach_the_drain_reason():
    failure = CheckResult("ib.port", Status.FAIL, "port DOWN", "mlx5_0/1", severity="high")
    ours = CheckResult("host.disk", Status.ERROR, "internal error: KeyError", severity="critical")
    verdict = decide([failure, ours], "prolog", "7", "pass")
    assert verdict.reason == "nodecheck: ib.port mlx5_0/1: port DOWN [prolog job 7 sev=high]"


# --- the per-component paths, each with a bug injected where the hardware would answer ---


def _run(check_id: str, tmp_path: Path, **options) -> list[CheckResult]:
    chk = all_checks()[check_id]
    ctx = make_ctx(options=options_of(chk, **options), state_dir=tmp_path / "state")
    return list(chk.func(ctx))


def _broken(*args, **kwargs):
    raise AttributeError("module 'nodecheck.probes.host' has no attribute 'disk_space'")


@pytest.mark.parametrize(
    ("check_id", "target", "options"),
    [
        ("host.disk", "nodecheck.probes.host.disk_space", {"min_free_gib": {"/tmp": 0}}),
        ("host.mounts", "os.statvfs", {"required": ["/"]}),
    ],
)
def test_a_bug_inside_a_bounded_call_is_an_error(monkeypatch, tmp_path, check_id, target, options):
    module, _, name = target.rpartition(".")
    monkeypatch.setattr(__import__(module, fromlist=[name]), name, _broken)
    results = _run(check_id, tmp_path, **options)
    assert [r.status for r in results] == [Status.ERROR], results
    assert "AttributeError" in results[0].message and results[0].traceback


def test_a_bug_in_one_gpus_judgement_is_that_gpus_error(monkeypatch, tmp_path, fresh_nvml_cache):
    from nodecheck.probes.nvml.model import Gpu

    snapshot = REPO / "tests" / "fixtures" / "nvml" / "h100-remap-pending.json"
    chk = all_checks()["gpu.remap"]
    ctx = make_ctx(options=options_of(chk), nvml=f"replay:{snapshot}", state_dir=tmp_path)
    clean = {r.component: r.status for r in chk.func(ctx)}
    assert Status.FAIL in clean.values()  # the replayed pending remap
    failing = next(c for c, s in clean.items() if s is Status.FAIL)

    original = Gpu.__getattribute__

    def bug_on_gpu0(self, name):
        if name == "remapped_rows" and original(self, "index") == 0:
            raise TypeError("unsupported operand type(s)")
        return original(self, name)

    monkeypatch.setattr(Gpu, "__getattribute__", bug_on_gpu0)
    found = {r.component: r.status for r in chk.func(ctx)}
    assert found["gpu0"] is Status.ERROR
    assert found[failing] is Status.FAIL  # the real fault still drains


def test_a_bug_in_one_ports_judgement_is_that_ports_error(monkeypatch, tmp_path):
    from nodecheck.checks.fabric import ports
    from tests.fixtures.sysfs import healthy_node

    healthy_node(tmp_path / "sys", hcas=2)
    chk = all_checks()["ib.port"]
    ctx = make_ctx(options=options_of(chk), sysfs_root=tmp_path / "sys")
    original = ports._judge_port

    def bug_on_mlx5_1(root, dev, port, *rest):
        if dev == "mlx5_1":
            raise IndexError("list index out of range")
        return original(root, dev, port, *rest)

    monkeypatch.setattr(ports, "_judge_port", bug_on_mlx5_1)
    found = {r.component: r.status for r in chk.func(ctx)}
    assert found == {"mlx5_0/1": Status.PASS, "mlx5_1/1": Status.ERROR}


# --- no import on a probe thread -------------------------------------------------------

_FRESH_DISK_RUN = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from helpers import make_ctx, options_of
    from nodecheck.checks import load_families
    from nodecheck.checks.registry import all_checks
    load_families()
    chk = all_checks()["host.disk"]
    paths = {f"/tmp/../tmp/{'./' * n}": 0 for n in range(48)}
    ctx = make_ctx(options=options_of(chk, min_free_gib=paths))
    print(sorted({(r.status.name, r.message.split(':')[0]) for r in chk.func(ctx)}))
    """
)


def test_host_disk_in_a_fresh_process_stats_every_path_from_threads():
    """host.disk stats its paths from several threads in the probe process. Its probe
    module used to be imported on first attribute access (importlib's LazyLoader), from
    whichever thread came first: on Python 3.11 the others saw a half-made module, and
    the AttributeError drained a healthy node as "cannot stat". Each fresh interpreter is
    a new first access."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FRESH_DISK_RUN, str(Path(__file__).parent)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    seen = {status for out, _ in outs for status in ("PASS", "FAIL", "ERROR") if status in out}
    assert seen == {"PASS"}, outs
