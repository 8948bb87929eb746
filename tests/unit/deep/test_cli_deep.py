"""`nodecheck run --tier deep` through the CLI on this machine (the CPU, small sizes).

This is the command the quarantine loop runs in validation jobs: its JSON and its exit
code are the contract.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import config, nodecheck

from tests.fixtures.imports import imported, recording_imports

pytest.importorskip("torch")

EXIT_OK, EXIT_FAIL = 0, 1

# Small CPU sizes: the figures mean nothing about a GPU, the code path is the GPU's.
SMALL = """
[checks."deep.gemm"]
cpu_size = 48
repeats = 1
precisions = ["fp16", "tf32"]
[checks."deep.membw"]
cpu_mib = 2
repeats = 1
[checks."deep.hostdev"]
cpu_mib = 2
repeats = 1
[checks."deep.sdc"]
cpu_size = 32
repeats = 2
"""


def run_cli(tmp_path: Path, *args: str, body: str = SMALL) -> subprocess.CompletedProcess:
    return nodecheck(list(args), config=config(tmp_path, body))


def test_a_deep_run_measures_the_cpu_and_says_pass_in_json_and_exit_code(tmp_path):
    proc = run_cli(tmp_path, "run", "--tier", "deep", "--json")
    assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "PASS" and out["exit_code"] == EXIT_OK and out["reason"] is None
    by_check = {r["check"]: r for r in out["results"]}
    assert set(by_check) == {
        "deep.dcgm", "deep.fabric", "deep.gemm", "deep.hostdev", "deep.ibperf",
        "deep.membw", "deep.nccl", "deep.p2p", "deep.sdc",
    }  # fmt: skip
    for measured in ("deep.gemm", "deep.membw", "deep.hostdev", "deep.sdc"):
        assert by_check[measured]["status"] == "PASS", by_check[measured]
        assert by_check[measured]["component"] == "cpu"
    gemm = by_check["deep.gemm"]["values"]
    assert gemm["fp16 GEMM"]["measured"] > 0 and gemm["tf32 GEMM"]["measured"] > 0, gemm
    assert by_check["deep.membw"]["values"]["memory copy"]["measured"] > 0
    # What this machine cannot do is a SKIP that says why, never a FAIL.
    assert "2 GPUs" in by_check["deep.p2p"]["message"]
    assert "not installed" in by_check["deep.dcgm"]["message"]
    assert "not installed" in by_check["deep.nccl"]["message"]
    assert "not in the job's node list" in by_check["deep.fabric"]["message"]
    assert "not installed" in by_check["deep.ibperf"]["message"]
    for skipped in ("deep.p2p", "deep.dcgm", "deep.nccl", "deep.fabric", "deep.ibperf"):
        assert by_check[skipped]["status"] == "SKIP"
    assert proc.stderr == ""  # nothing (torch's numpy warning included) on a hook's stderr


def test_a_deep_check_below_its_expected_figure_fails_the_run_by_exit_code(tmp_path):
    body = SMALL.replace('precisions = ["fp16", "tf32"]', 'precisions = ["tf32"]\nexpected = 1e6')
    proc = run_cli(tmp_path, "run", "--tier", "deep", "--check", "deep.gemm", "--json", body=body)
    assert proc.returncode == EXIT_FAIL, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    [result] = out["results"]
    assert result["status"] == "FAIL" and "tf32 GEMM" in result["message"]
    assert result["values"]["tf32 GEMM"]["expected"] == 1e6, result
    assert out["reason"].startswith("nodecheck: deep.gemm")


def test_a_plain_run_is_the_fast_tier_and_a_check_is_found_by_its_id(tmp_path):
    body = '[checks."host.mounts"]\nrequired = ["/"]\n'
    plain = run_cli(tmp_path, "run", "--json", body=body)
    ids = {r["check"] for r in json.loads(plain.stdout)["results"]}
    assert ids and not any(cid.startswith("deep.") for cid in ids)
    named = run_cli(tmp_path, "run", "--check", "deep.p2p", "--json", body=body)
    assert [r["check"] for r in json.loads(named.stdout)["results"]] == ["deep.p2p"]
    wrong = run_cli(tmp_path, "run", "--tier", "fast", "--check", "deep.p2p", body=body)
    assert wrong.returncode == 2 and "in tier fast" in wrong.stderr


def test_list_shows_the_tier_and_explain_the_expected_figures_with_sources(tmp_path):
    listed = json.loads(run_cli(tmp_path, "list", "--json").stdout)
    tiers = {row["id"]: row["tier"] for row in listed["checks"]}
    assert tiers["deep.gemm"] == "deep" and tiers["gpu.count"] == "fast"
    text = run_cli(tmp_path, "explain", "deep.gemm").stdout
    assert "tier deep" in text
    assert "H100 SXM" in text and "B200" in text and "989.5" in text
    assert "NVIDIA H100 Tensor Core GPU datasheet" in text
    for figure_check in ("deep.membw", "deep.hostdev", "deep.p2p"):
        explained = run_cli(tmp_path, "explain", figure_check).stdout
        assert "Expected figures per GPU model" in explained


def test_a_healthy_prolog_loads_the_deep_checks_but_nothing_they_measure_with(tmp_path):
    """Every hook registers the deep checks; torch, the probes, the judgement (statistics)
    and the sockets of deep.fabric are loaded only in a deep check's probe child. Imports are
    recorded in every process of the hook (the keeper, its run, the probe children) by an
    audit hook, which forked children inherit."""
    heavy = ("torch", "statistics", "nodecheck.probes.active", "nodecheck.checks.deep.judge")
    seen = tmp_path / "imported"
    probe = recording_imports(
        seen,
        before="",
        then="from nodecheck.entry.cli import main\nsys.exit(main(['hook', 'prolog']))",
    )
    cfg = config(tmp_path, '[checks."host.mounts"]\nrequired = ["/"]\n')
    env = {"PATH": "/usr/bin:/bin", "SLURMD_NODENAME": "n1", "SLURM_JOB_ID": "77",
           "NODECHECK_CONFIG": str(cfg)}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    modules = {name for _pid, name in imported(seen)}
    assert "nodecheck.checks.deep.gpu" in modules  # registered
    assert "psutil" in modules  # host.mounts, in its probe child: the audit sees children too
    assert sorted(m for m in modules if m.startswith(heavy)) == []
