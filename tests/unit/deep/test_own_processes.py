"""Issue 25, item 1: a deep run measures every GPU, not only in its first GPU check.

torch keeps each GPU's CUDA context until the probe process exits, so after deep.gemm NVML
lists the probe process itself (and deep.fabric's worker, its child) on every GPU. Those are
ours, not someone's job. And a deep check that measured nothing on a node that has GPUs is
never a pass for `validate` (which returns a node unless a result is FAIL or ERROR).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deep.test_checks import H100_BUSES, NVML, ctx_for, cuda_devices, run
from nodecheck.checks.deep.common import select_devices as select
from nodecheck.checks.deep.gpu import deep_gemm
from nodecheck.checks.deep.p2p import deep_p2p
from nodecheck.core.results import Status
from nodecheck.probes.active import owners
from nodecheck.quarantine.ladder import Step, ValidationHistory, decide_after_validation

pytest.importorskip("torch")


def snapshot_with(tmp_path: Path, pids_per_gpu: list[list[int]]) -> str:
    """The recorded healthy HGX H100 with these compute processes on its GPUs."""
    data = json.loads((NVML / "h100-healthy.json").read_text())
    for gpu, pids in zip(data["gpus"], pids_per_gpu, strict=False):
        gpu["processes"] = [{"pid": pid, "usedGpuMemory": 536870912} for pid in pids]
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(data))
    return f"replay:{path}"


@pytest.fixture
def torch_sees(monkeypatch):
    from nodecheck.probes.active import device

    def install(found):
        monkeypatch.setattr(device, "find_devices", lambda _torch, _want="auto": list(found))

    return install


def test_our_own_probe_process_on_every_gpu_does_not_make_them_busy(
    tmp_path, torch_sees, fresh_nvml_cache
):
    """What NVML shows after deep.gemm: our pid on all eight GPUs. Every GPU is measured."""
    torch_sees(cuda_devices(H100_BUSES))
    source = snapshot_with(tmp_path, [[os.getpid()]] * 8)
    chosen = select(ctx_for("deep.membw", nvml=source), "deep.membw")
    assert [d.component for d in chosen.devices] == [f"gpu{i}" for i in range(8)]
    assert chosen.skipped == ()


def test_a_child_of_the_probe_process_is_ours_too(tmp_path, torch_sees, fresh_nvml_cache):
    """deep.fabric's worker is a child of the probe process; a stranger's pid still counts."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        torch_sees(cuda_devices(H100_BUSES[:2]))
        source = snapshot_with(tmp_path, [[child.pid], [child.pid, 48213]])
        chosen = select(ctx_for("deep.membw", nvml=source), "deep.membw")
        assert [d.component for d in chosen.devices] == ["gpu0"]
        [refused] = [r for r in chosen.skipped if r.component == "gpu1"]
        assert refused.status is Status.SKIP and refused.values["pids"] == [48213]
    finally:
        child.kill()
        child.wait()


def test_own_pids_reads_the_tree_and_namespace_aliases_from_procfs(tmp_path):
    """A fake procfs: 100 (us) -> 101 -> 102, and 200 unrelated; 101 is 7 in its container."""
    for pid, ppid, nspid in ((100, 1, "100"), (101, 100, "101\t7"), (102, 101, "102"),
                             (200, 1, "200")):  # fmt: skip
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} (py thon) S {ppid} 1 1 0 -1\n")
        (d / "status").write_text(f"Name:\tpy\nNSpid:\t{nspid}\n")
    assert owners.own_pids(tmp_path, 100) == {100, 101, 7, 102}


def test_a_node_whose_every_gpu_is_busy_is_not_a_pass_for_validate(
    tmp_path, torch_sees, fresh_nvml_cache
):
    """Every GPU runs someone else's process: per-GPU SKIPs, and an ERROR for the check, so
    that validation does not return a node nothing was measured on."""
    torch_sees(cuda_devices(H100_BUSES[:2]))
    results = run(deep_gemm, ctx_for("deep.gemm", nvml=snapshot_with(tmp_path, [[4242], [4243]])))
    assert {r.component: r.status for r in results if r.component != "node"} == {
        "gpu0": Status.SKIP, "gpu1": Status.SKIP,
    }  # fmt: skip
    [error] = [r for r in results if r.status is Status.ERROR]
    assert "measured no GPU" in error.message
    decision = decide_after_validation(results, ValidationHistory(0, False), ("drain",), None)
    assert decision.step is not Step.RETURN


def test_p2p_with_one_measurable_gpu_of_two_is_an_error_not_a_skip(
    tmp_path, torch_sees, fresh_nvml_cache
):
    torch_sees(cuda_devices(H100_BUSES[:2]))
    results = run(deep_p2p, ctx_for("deep.p2p", nvml=snapshot_with(tmp_path, [[], [4243]])))
    assert any(r.status is Status.ERROR and "1 of 2" in r.message for r in results), results
