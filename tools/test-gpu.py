#!/usr/bin/env python3
"""`make test-gpu`: the GPU acceptance run, one command on a GPU node.

    tools/test-gpu.py                       # record under tests/fixtures/real/gpu-runs/
    tools/test-gpu.py --out /tmp/run        # somewhere else
    tools/test-gpu.py --budget-s 470        # the whole run's time limit (default 470)

In order, each step bounded so that the whole run ends within --budget-s (8 minutes on an
8-GPU node by default):

1. is there a GPU? NVML started in a child with a deadline, and torch's CUDA build. No GPU:
   exit 77 at once ("no GPU"), having run and written nothing. NVML sees GPUs but torch
   has no CUDA: exit 2, saying which wheel to install;
2. `tools/record-nvml-snapshot.py`: the node's NVML snapshot (a replay fixture);
3. `pytest tests/gpu` and the NVML binding suite's gpu-marked tests
   (tests/unit/test_nvml_bindings.py) against the real driver, JUnit XML kept;
4. `nodecheck run --tier deep --json` on every GPU (single node: deep.fabric SKIPs);
5. `summary.json`: GPU model and count, driver and CUDA versions, torch's, every deep
   figure per check and GPU, each step's exit status and duration.

Everything lands in tests/fixtures/real/gpu-runs/<model>-<driver>/ (or --out), ready to
commit. Exit 0 when every step passed, 1 when one failed, 77 without a GPU, 2 on a setup
error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NO_GPU = 77  # automake's "skipped": distinct from a failure
SETUP_ERROR = 2
PROBE = """
import json, sys
from nodecheck.probes.nvml import real
snap = real.collect()
gpus = [g for g in snap.gpus if g.name]
print(json.dumps({"error": str(snap.init_error) if snap.init_error else None,
                  "count": snap.device_count or 0, "driver": snap.driver_version,
                  "cuda_driver": snap.cuda_driver_version,
                  "model": gpus[0].name if gpus else None}))
"""
TORCH_PROBE = """
import json, warnings
warnings.simplefilter("ignore")
import torch
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "available": torch.cuda.is_available(),
                  "count": torch.cuda.device_count() if torch.cuda.is_available() else 0}))
"""


def say(text: str) -> None:
    print(f"test-gpu: {text}", file=sys.stderr, flush=True)


def probe(code: str, timeout_s: float) -> dict | str:
    """Run `code` in a fresh interpreter; its JSON line, or why there is none."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=timeout_s, cwd=REPO, env=env)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"did not answer within {timeout_s:.0f}s"
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
    return json.loads(lines[-1])


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


class Steps:
    """The run's steps, each bounded by what is left of the budget."""

    def __init__(self, budget_s: float, out: Path) -> None:
        self.deadline = time.monotonic() + budget_s
        self.out = out
        self.record: list[dict] = []

    def run(self, name: str, argv: list[str], limit_s: float, log: str) -> int:
        left = self.deadline - time.monotonic()
        timeout = max(5.0, min(limit_s, left))
        say(f"{name} (at most {timeout:.0f}s)")
        started = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.out / log, "w") as sink:
            try:
                code = subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO,
                                      env=env, timeout=timeout).returncode  # fmt: skip
            except subprocess.TimeoutExpired:
                code = 124
        took = time.monotonic() - started
        self.record.append({"step": name, "exit": code, "seconds": round(took, 1), "log": log})
        say(f"{name}: exit {code} in {took:.0f}s")
        return code


DEEP_CONFIG = """# written by tools/test-gpu.py
log_file = "{out}/nodecheck.log"
state_dir = "{out}/state"
killswitch_file = "{out}/disabled"
metrics_file = "{out}/nodecheck.prom"
scontrol = "/bin/false"
slurm_backend = "scontrol"
deep_budget_s = {budget}

[checks."deep.dcgm"]
level = 1
run_timeout_s = 110
timeout_s = 120

[checks."deep.nccl"]
args = ["-b", "8", "-e", "1G", "-f", "2", "-g", "{gpus}"]
run_timeout_s = 100
timeout_s = 110
"""


def figures(deep_json: Path) -> list[dict]:
    """Every deep result, figures kept: what gets committed and compared across nodes."""
    try:
        doc = json.loads(deep_json.read_text())
    except (OSError, ValueError):
        return []
    results = doc.get("results", doc) if isinstance(doc, dict) else doc
    return [
        {k: r.get(k) for k in ("check", "status", "component", "message", "values")}
        for r in results
        if isinstance(r, dict) and str(r.get("check", "")).startswith("deep.")
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, help="output directory (default: gpu-runs/<model>-<driver>)"
    )
    parser.add_argument("--budget-s", type=float, default=470.0, help="the whole run's limit")
    args = parser.parse_args(argv)

    found = probe(PROBE, 60)
    if isinstance(found, str) or found.get("error") or not found.get("count"):
        why = found if isinstance(found, str) else (found.get("error") or "NVML sees 0 GPUs")
        say(f"no GPU: {why}. Nothing was run; exit {NO_GPU}.")
        return NO_GPU
    tor = probe(TORCH_PROBE, 120)
    if isinstance(tor, str) or not tor.get("available"):
        why = tor if isinstance(tor, str) else f"torch {tor['torch']} has no CUDA"
        say(f"setup: NVML sees {found['count']} GPUs but {why}: install the CUDA build of the "
            "pinned torch version (docs/deep.md, Installing)")  # fmt: skip
        return SETUP_ERROR
    model, driver = found["model"], found["driver"]
    out = args.out or REPO / "tests/fixtures/real/gpu-runs" / f"{slug(model)}-{driver}"
    out.mkdir(parents=True, exist_ok=True)
    say(f"{found['count']} x {model}, driver {driver}, torch {tor['torch']} "
        f"(CUDA {tor['cuda']}) -> {out}")  # fmt: skip
    steps = Steps(args.budget_s, out)
    py = sys.executable
    snapshot = str(out / "nvml-snapshot.json")
    comment = f"{found['count']} x {model}, make test-gpu"
    steps.run("nvml snapshot", [py, "tools/record-nvml-snapshot.py", "-o", snapshot,
                                "--comment", comment], 60, "record.log")  # fmt: skip
    steps.run("tests/gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu",
                            f"--junitxml={out}/tests-gpu.xml"], 150, "tests-gpu.log")  # fmt: skip
    bindings = [py, "-m", "pytest", "-q", "-m", "gpu", "tests/unit/test_nvml_bindings.py",
                f"--junitxml={out}/nvml-bindings.xml"]  # fmt: skip
    steps.run("nvml bindings (gpu)", bindings, 90, "nvml-bindings.log")
    left = max(60.0, steps.deadline - time.monotonic() - 5)
    config = out / "nodecheck.toml"
    config.write_text(DEEP_CONFIG.format(out=out, budget=int(left - 10), gpus=found["count"]))
    deep_json = out / "deep-run.json"
    code = steps.run("nodecheck run --tier deep --json",
                     ["sh", "-c", f'NODECHECK_CONFIG="{config}" SLURMD_NODENAME="$(hostname -s)" '
                      f'"{py}" -m nodecheck run --tier deep --json > "{deep_json}"'],
                     left, "deep-run.log")  # fmt: skip
    summary = {
        "recorded": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu_model": model, "gpu_count": found["count"], "driver": driver,
        "cuda_driver_version": found["cuda_driver"], "torch": tor["torch"],
        "torch_cuda": tor["cuda"], "python": platform.python_version(),
        "steps": steps.record, "deep": figures(deep_json),
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    failed = [s["step"] for s in steps.record if s["exit"] != 0]
    # The deep run exits 1 on a FAIL verdict: a finding on this node, reported, not a test bug.
    took = args.budget_s - (steps.deadline - time.monotonic())
    verdict = "all steps passed" if not failed else "failed: " + ", ".join(failed)
    say(f"done in {took:.0f}s; {verdict}; see {out}")
    return 0 if not failed else 1 if code != 2 else SETUP_ERROR


if __name__ == "__main__":
    sys.exit(main())
