"""Job-scoped prolog/epilog with a replayed 8-GPU topology: two PCIe switches per socket."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodecheck.core.results import CheckResult, Status
from nodecheck.probes.jobscope import JobScope, nvidia_gpus
from nodecheck.run.decide import EXIT_FAIL, EXIT_OK, Action, decide

REPO = Path(__file__).resolve().parents[2]


def _dev(root: Path, path: str, vendor: str, pci_class: str, numa: int) -> Path:
    d = root / "devices" / path
    d.mkdir(parents=True)
    (d / "vendor").write_text(f"{vendor}\n")
    (d / "class").write_text(f"{pci_class}\n")
    (d / "numa_node").write_text(f"{numa}\n")
    bus = root / "bus" / "pci" / "devices"
    bus.mkdir(parents=True, exist_ok=True)
    (bus / d.name).symlink_to(os.path.relpath(d, bus))
    return d


def _class_link(root: Path, kind: str, name: str, pci_dir: Path) -> None:
    sub = pci_dir / kind / name
    sub.mkdir(parents=True)
    (sub / "device").symlink_to(os.path.relpath(pci_dir, sub))
    cls = root / "class" / kind
    cls.mkdir(parents=True, exist_ok=True)
    (cls / name).symlink_to(os.path.relpath(sub, cls))


@pytest.fixture
def dgx(tmp_path):
    """Like a DGX H100: 4 PCIe switches, each with 2 GPUs and one ConnectX HCA; sockets
    0 and 1 each own two switches. A management NIC hangs off the root complex."""
    root = tmp_path / "sys"
    gpu = 0
    for switch in range(4):
        numa = switch // 2
        rc = f"pci0000:{switch * 0x40:02x}"
        sw = f"{rc}/0000:{switch * 0x40 + 1:02x}:00.0/0000:{switch * 0x40 + 2:02x}:00.0"
        for slot in range(2):
            _dev(root, f"{sw}/0000:{switch * 0x40 + 3 + slot:02x}:00.0", "0x10de", "0x030200", numa)
            gpu += 1
        hca = _dev(root, f"{sw}/0000:{switch * 0x40 + 5:02x}:00.0", "0x15b3", "0x020700", numa)
        _class_link(root, "infiniband", f"mlx5_{switch}", hca)
    mgmt = _dev(root, "pci0000:00/0000:00:1c.0", "0x8086", "0x020000", 0)
    _class_link(root, "net", "eno1", mgmt)
    return root


def fail(check, component):
    return CheckResult(check, Status.FAIL, "bad", component)


def test_gpus_are_found_in_pci_bus_order(dgx):
    gpus = nvidia_gpus(dgx)
    assert [g.bdf for g in gpus] == [
        "0000:03:00.0",
        "0000:04:00.0",
        "0000:43:00.0",
        "0000:44:00.0",
        "0000:83:00.0",
        "0000:84:00.0",
        "0000:c3:00.0",
        "0000:c4:00.0",
    ]
    assert [g.numa for g in gpus] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_pcie_locality_pairs_each_gpu_with_its_switch_hca(dgx):
    scope = JobScope.from_sysfs(dgx, [0, 1], "pcie")
    assert scope.local_devices == {"mlx5_0"}
    assert scope.contains(fail("gpu.remap", "gpu1"))
    assert not scope.contains(fail("gpu.remap", "gpu3"))
    assert scope.contains(fail("ib.port", "mlx5_0/1"))
    assert not scope.contains(fail("ib.port", "mlx5_2/1"))
    assert not scope.contains(fail("net.link", "eno1"))
    assert scope.contains(fail("host.mounts", "/home"))  # node-wide: always the job's


def test_numa_locality_is_coarser(dgx):
    scope = JobScope.from_sysfs(dgx, [0], "numa")
    assert scope.local_devices == {"mlx5_0", "mlx5_1", "eno1"}


def test_policy_lets_the_job_run_but_drains_for_a_foreign_fault(dgx):
    scope = JobScope.from_sysfs(dgx, [0, 1], "pcie")
    foreign = decide([fail("gpu.remap", "gpu3")], "prolog", "812", "pass", scope.contains)
    assert foreign.action is Action.DRAIN and foreign.exit_code == EXIT_OK
    assert "outside this job's GPUs" in foreign.summary
    assert foreign.reason.startswith("nodecheck: gpu.remap gpu3: bad")
    mine = decide(
        [fail("gpu.remap", "gpu3"), fail("ib.port", "mlx5_0/1")],
        "prolog",
        "812",
        "pass",
        scope.contains,
    )
    assert mine.action is Action.DRAIN and mine.exit_code == EXIT_FAIL


def test_prolog_end_to_end_with_replayed_gpus(dgx, tmp_path):
    calls = tmp_path / "calls"
    scontrol = tmp_path / "scontrol"
    # Answers `show node` like a real idle node, records every call.
    scontrol.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n'
        'if [ "$1" = show ]; then echo "NodeName=n1 State=ALLOCATED Partitions=gpu"; fi\n'
    )
    scontrol.chmod(0o755)
    cfg = tmp_path / "nodecheck.toml"
    cfg.write_text(f"""
log_file = ""
state_dir = "{tmp_path}/state"
metrics_file = ""
scontrol = "{scontrol}"
slurm_backend = "scontrol"
job_scoped = true
breaker_max_share = 0
breaker_max_drains = 0
sysfs_root = "{dgx}"
nvml = "replay:{REPO}/tests/fixtures/nvml/h100-remap-pending.json"
[checks."gpu.count"]
expected = 8
""")
    cfg.chmod(0o644)

    def prolog(gpus):
        env = {
            "PATH": "/usr/bin:/bin",
            "SLURMD_NODENAME": "n1",
            "SLURM_JOB_ID": "812",
            "SLURM_JOB_GPUS": gpus,
            "NODECHECK_CONFIG": str(cfg),
        }
        out = subprocess.run(
            [sys.executable, "-m", "nodecheck", "hook", "prolog"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        verdict = next(
            json.loads(line)
            for line in out.stderr.splitlines()
            if line.startswith("{") and '"event": "verdict"' in line
        )
        return out.returncode, verdict

    code, verdict = prolog("0,1")  # the replayed fault is on gpu3
    assert code == 0 and verdict["action"] == "drained"
    assert 'update NodeName=n1 State=DRAIN Reason="nodecheck: gpu.remap gpu3' in calls.read_text()
    calls.unlink()
    code, verdict = prolog("2,3")
    assert code == 1 and verdict["action"] == "drained"
