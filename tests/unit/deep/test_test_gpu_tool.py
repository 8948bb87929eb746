"""`make test-gpu` (tools/test-gpu.py) on a machine without a GPU: it says so at once and
exits 77, a code of its own (a failure is 1), having run and written nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def test_without_a_gpu_it_exits_77_quickly_saying_no_gpu(tmp_path):
    from nodecheck.probes.nvml import real

    if real.collect().init_error is None:
        pytest.skip("this machine has a working NVML: make test-gpu would run for real")
    started = time.monotonic()
    tool = [sys.executable, str(REPO / "tools/test-gpu.py"), "--out", str(tmp_path / "run")]
    out = subprocess.run(tool, capture_output=True, text=True, timeout=120)
    assert out.returncode == 77, out.stderr
    assert "no GPU" in out.stderr and "Nothing was run" in out.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run").exists()


def test_the_makefile_target_runs_the_tool():
    text = (REPO / "Makefile").read_text()
    assert "\ntest-gpu:\n\t$(VPY) tools/test-gpu.py" in text
