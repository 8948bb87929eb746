"""The gpu.* family against the real NVML of this machine (H100/A100/... nodes).

Skipped, as a whole module, where NVML does not start (no driver, no libnvidia-ml.so, no
GPU). Run on a GPU node with `python -m pytest tests/gpu -m gpu -v`; record a fixture of
the node with tools/record-nvml-snapshot.py.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodecheck.probes import nvml
from nodecheck.probes.nvml import real
from nodecheck.probes.nvml.model import Snapshot

REPO = Path(__file__).resolve().parents[2]
PROBE_TIMEOUT_S = 60.0


def _nvml_unavailable() -> str | None:
    """Why NVML cannot be used here, or None. Probed in a forked child with a deadline,
    so a hanging nvmlInit (a GPU off the bus) skips instead of hanging the test run."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            snap = real.collect()
            err = snap.init_error
            if err is None and not snap.device_count:
                text = "NVML started but sees no GPU"
            else:
                text = "" if err is None else f"NVML does not start here: {err}"
            os.write(write_fd, text.encode() + b"\n")
        finally:
            os._exit(0)
    os.close(write_fd)
    ready, _, _ = select.select([read_fd], [], [], PROBE_TIMEOUT_S)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(read_fd)
        return f"nvmlInit did not return within {PROBE_TIMEOUT_S:.0f}s"
    text = os.read(read_fd, 4096).decode().strip()
    os.close(read_fd)
    os.waitpid(pid, 0)
    return text or None


REASON = _nvml_unavailable()
if REASON:
    pytest.skip(f"no usable GPU/NVML: {REASON}", allow_module_level=True)

from helpers import make_ctx, options_of  # noqa: E402

from nodecheck.checks.registry import all_checks, with_defaults  # noqa: E402
from nodecheck.core.results import Status  # noqa: E402
from nodecheck.run.runner import Planned, run_checks  # noqa: E402

REGISTRY = all_checks()
NVML_CHECKS = sorted(c for c in REGISTRY if c.startswith("gpu.") and c != "gpu.xid")
BUS_ID = re.compile(r"^[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.[0-7]$")


@pytest.fixture(autouse=True)
def _fresh_cache():
    nvml.clear_cache()
    yield
    nvml.clear_cache()


@pytest.fixture(scope="module")
def snap() -> Snapshot:
    return real.collect()


def test_snapshot_has_real_nvml_shapes(snap):
    assert snap.init_error is None and snap.device_count == len(snap.gpus) > 0
    assert re.match(r"^\d+\.\d+(\.\d+)?$", snap.driver_version), snap.driver_version
    assert snap.cuda_driver_version >= 11000  # e.g. 12040
    for gpu in snap.gpus:
        if "handle" in gpu.errors:
            continue  # a lost GPU is data; gpu.count reports it
        assert gpu.name and gpu.uuid.startswith(("GPU-", "MIG-")), gpu
        assert BUS_ID.match(gpu.pci_bus_id), gpu.pci_bus_id
        assert gpu.memory.total > 1024**3 and gpu.memory.used <= gpu.memory.total
        if gpu.power_limit_mw is not None:
            assert 10_000 <= gpu.power_limit_mw <= 2_000_000  # milliwatts
        if gpu.temperature_c is not None:
            assert 0 < gpu.temperature_c < 120
        if gpu.pcie_width_max is not None:
            assert gpu.pcie_width_current <= gpu.pcie_width_max
        for key, err in gpu.errors.items():
            assert err.name.startswith("NVML_ERROR_"), (key, err)


def test_snapshot_round_trips_and_replays(snap, tmp_path):
    assert Snapshot.from_json(snap.to_json()) == snap
    path = tmp_path / "node.json"
    path.write_text(snap.to_json())
    replayed = nvml.get_snapshot(f"replay:{path}")
    assert replayed.gpus == snap.gpus


def test_selection_reads_only_those_gpus():
    one = real.collect([0])
    assert [g.index for g in one.gpus] == [0] and one.selected == (0,)


def test_collection_is_fast_enough_for_a_prolog(snap):
    # The whole gpu group shares one ~10 s deadline; collection should be well under it.
    started = time.monotonic()
    real.collect()
    took = time.monotonic() - started
    print(f"\nNVML snapshot of {len(snap.gpus)} GPUs: {took:.3f}s")
    assert took < 5.0


def _plan(tmp_path, source: str, phase: str = "manual"):
    planned = []
    for cid in NVML_CHECKS:
        chk = REGISTRY[cid]
        extra = {"settle_s": 0} if cid == "gpu.idle" else {}
        ctx = make_ctx(
            phase=phase,
            options=options_of(chk, **extra),
            nvml=source,
            state_dir=tmp_path / "state",
        )
        planned.append(Planned(chk, ctx, 30.0))
    return planned


def test_every_check_runs_on_real_nvml_without_internal_errors(tmp_path):
    results = run_checks(_plan(tmp_path, "real"), budget_s=60)
    assert {r.check_id for r in results} == set(NVML_CHECKS)
    errors = [(r.check_id, r.component, r.message) for r in results if r.status is Status.ERROR]
    assert errors == []
    for r in results:
        r = with_defaults(r, REGISTRY)
        print(f"{r.check_id:18} {r.status.name:5} {r.component:10} {r.message}")
    # Not asserted healthy: this is a real node. Hung probes would show here though.
    assert not [r for r in results if r.values.get("hung")]


def test_real_and_replayed_snapshot_give_the_same_verdicts(tmp_path):
    path = tmp_path / "node.json"
    path.write_text(real.collect().to_json())
    live = run_checks(_plan(tmp_path / "a", "real"), budget_s=60)
    replay = run_checks(_plan(tmp_path / "b", f"replay:{path}"), budget_s=60)

    def verdicts(results):
        # temperature/power/clocks drift between two readings; compare the stable checks
        drifting = {"gpu.thermal", "gpu.power", "gpu.clocks", "gpu.idle"}
        return sorted(
            (r.check_id, r.component, r.status.name) for r in results if r.check_id not in drifting
        )

    assert verdicts(live) == verdicts(replay)


def test_gpu_xid_reads_the_real_kernel_log(tmp_path):
    if not os.access("/dev/kmsg", os.R_OK):
        pytest.skip("/dev/kmsg not readable (run as root)")
    chk = REGISTRY["gpu.xid"]
    ctx = make_ctx(phase="manual", options=options_of(chk), state_dir=tmp_path / "state")
    results = list(chk.func(ctx))
    assert results and all(r.status is not Status.ERROR for r in results)
    for r in results:
        print(f"gpu.xid {r.status.name} {r.component}: {r.message}")


def test_record_tool_on_this_node(tmp_path):
    out = tmp_path / "node.json"
    res = subprocess.run(
        [sys.executable, str(REPO / "tools" / "record-nvml-snapshot.py"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["format"] == "nodecheck-nvml-snapshot/1" and data["gpus"]
    assert Snapshot.load(out).device_count == len(data["gpus"])
