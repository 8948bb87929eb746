#!/usr/bin/env python3
"""Job-start overhead of nodecheck: figures, never pass/fail.

What it measures, on a fixture node (8 replayed H100s, 8 InfiniBand ports in a fake sysfs
tree, the host checks), with every run in a clean environment the way slurmd starts a
Prolog (SLURMD_NODENAME, SLURM_JOB_ID, NODECHECK_CONFIG, no PATH):

* wall time, start of the process to its exit, of
    - a bare interpreter start (`python -I -c pass`, the same python the prolog uses),
    - the healthy prolog (`prolog/nodecheck-prolog`, what Slurm runs) in-process and
      handed to `nodecheck agent` (started by the bench on a socket of its own), and
      `python -I -m nodecheck hook prolog` without the sh entrypoint,
    - the prolog with one failing check (one IB port down: drain + exit 1);
  rounds interleave the variants so background load hits all of them alike;
* peak RSS from wait4() (the figure `/usr/bin/time -f %M` prints): the largest resident
  set of any single process of the tree, the forked probe children included (Linux folds
  reaped descendants into the child's ru_maxrss). It is not the sum over processes;
  through the agent that is the client only: the agent's own size is printed apart;
* Slurm calls, counted by a recording fake scontrol (`scontrol = ...` in the config);
* import times (`python -X importtime`, median of several runs): the top entries and
  every nodecheck module.

Usage: bench/bench.py [--runs N] [--warmup N] [--keep]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine_line  # noqa: E402
from tests.fixtures.agent import start_agent  # noqa: E402
from tests.fixtures.sysfs import healthy_node  # noqa: E402

PROLOG = REPO / "prolog" / "nodecheck-prolog"
NVML_FIXTURE = REPO / "tests" / "fixtures" / "nvml" / "h100-healthy.json"
PORTS = [f"mlx5_{i}/1" for i in range(8)]
NDR = "400 Gb/sec (4X NDR)"


def venv_python() -> Path:
    """The python the entrypoint uses: the checkout's .venv, else this interpreter."""
    candidate = REPO / ".venv" / "bin" / "python3"
    return candidate if os.access(candidate, os.X_OK) else Path(sys.executable)


def registered_checks(python: Path) -> list[str]:
    out = subprocess.run(
        [
            str(python),
            "-I",
            "-c",
            "from nodecheck.checks.registry import all_checks; print(' '.join(all_checks()))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return out.stdout.split()


def write_config(
    work: Path, name: str, sysfs: Path, checks: list[str], scontrol: Path, probes: bool = True
) -> Path:
    """The bench node's config; probes=False disables every check (the parent's work only)."""
    lines = [
        f'log_file = "{work}/{name}.log"',
        f'state_dir = "{work}/state-{name}"',
        f'killswitch_file = "{work}/disabled"',
        f'scontrol = "{scontrol}"',
        'slurm_backend = "scontrol"',
        "drain_attempts = 1",
        f'sysfs_root = "{sysfs}"',
        f'nvml = "replay:{NVML_FIXTURE}"',
    ]
    if not probes:
        for check_id in checks:
            lines += [f'[checks."{check_id}"]', "enabled = false"]
        return _save(work / f"{name}.toml", lines)
    lines += [
        '[checks."host.disk"]',
        'min_free_gib = { "/tmp" = 0.01 }',
        '[checks."host.mounts"]',
        'required = ["/"]',
    ]
    if "ib.port" in checks:
        lines += [
            '[checks."ib.port"]',
            f"ports = {PORTS!r}".replace("'", '"'),
            f'rate = "{NDR}"',
            'link_layer = "InfiniBand"',
        ]
    if "net.link" in checks:
        lines += ['[checks."net.link"]', 'devices = ["eno1"]']
    if "gpu.count" in checks:
        lines += ['[checks."gpu.count"]', "expected = 8"]
    return _save(work / f"{name}.toml", lines)


def _save(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def fake_scontrol(work: Path) -> tuple[Path, Path]:
    """Records each call and answers as a controller with one idle node in a 100-node
    partition and no reservation would: `show node`, `show -o reservation`, `show -o
    partition`; accepts updates and the breaker's slot (a reservation) being made and let go,
    so the failing run drains as on a cluster with the breaker at its defaults."""
    calls = work / "scontrol-calls"
    script = work / "scontrol"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'case "$1 $2 $3" in\n'
        '  "show -o reservation") echo "No reservations in the system" ;;\n'
        '  "show -o partition")\n'
        '    echo "PartitionName=debug AllowGroups=ALL Nodes=n[1-100] State=UP'
        ' TotalCPUs=100 TotalNodes=100" ;;\n'
        '  "show node "*)\n'
        '    echo "NodeName=$3 Arch=x86_64 CoresPerSocket=1"\n'
        '    echo "   State=IDLE ThreadsPerCore=1"\n'
        '    echo "   Partitions=debug" ;;\n'
        '  "create reservation "*) echo "Reservation created: nodecheck_breaker_0" ;;\n'
        "esac\n"
        "exit 0\n"
    )
    script.chmod(0o755)
    return script, calls


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in KiB of the tree as wait4 reports it, exit code)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss, proc.returncode


def agent_memory(pid: int) -> str:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return f"VmRSS {fields.get('VmRSS', '?')}, VmHWM {fields.get('VmHWM', '?')}"


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p * (len(ordered) - 1))))]

    return {
        "median": statistics.median(ordered),
        "p10": pct(0.10),
        "p90": pct(0.90),
        "min": ordered[0],
        "stdev": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
    }


def import_times(python: Path, env: dict[str, str], runs: int) -> dict[str, tuple[float, float]]:
    """module -> (median self us, median cumulative us) over `runs` runs of the prolog."""
    samples: dict[str, list[tuple[int, int]]] = {}
    for _ in range(runs):
        out = subprocess.run(
            [str(python), "-I", "-X", "importtime", "-m", "nodecheck", "hook", "prolog"],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            check=False,
        )
        for line in out.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            head, cum_us, name = line.split("|", 2)
            self_us = head.split(":", 1)[1]
            samples.setdefault(name.rstrip(), []).append((int(self_us), int(cum_us)))
    return {
        name: (
            statistics.median(s for s, _ in vals),
            statistics.median(c for _, c in vals),
        )
        for name, vals in samples.items()
    }


def pool_of(agent_log: Path) -> list[str]:
    """The probe groups the bench's agent keeps (its agent_ready line)."""
    import json

    for line in agent_log.read_text().splitlines():
        if '"agent_ready"' in line:
            return json.loads(line).get("probe_pool", [])
    return []


def fmt_ms(s: dict[str, float]) -> str:
    return (
        f"median {s['median'] * 1000:6.1f} ms  p10 {s['p10'] * 1000:6.1f}  "
        f"p90 {s['p90'] * 1000:6.1f}  stdev {s['stdev'] * 1000:5.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="measured rounds (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first")
    parser.add_argument("--import-runs", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()

    python = venv_python()
    work = Path(tempfile.mkdtemp(prefix="nodecheck-bench-"))
    work.chmod(0o755)
    agent: subprocess.Popen | None = None
    try:
        checks = registered_checks(python)
        healthy_node(work / "sys-healthy", hcas=8)
        broken = healthy_node(work / "sys-broken", hcas=8)
        broken.set_port("mlx5_3", 1, state=1, phys_state=3)
        scontrol, calls = fake_scontrol(work)
        cfg_ok = write_config(work, "healthy", work / "sys-healthy", checks, scontrol)
        cfg_bad = write_config(work, "failing", work / "sys-broken", checks, scontrol)

        agent_sock = work / "run" / "agent.sock"
        # The entrypoints find it through NODECHECK_AGENT_SOCKET (env() below).
        agent = start_agent(
            [str(python), "-I", "-m", "nodecheck", "agent"], agent_sock, work / "agent.log"
        )

        def env(cfg: Path, sock: Path = work / "no-agent.sock") -> dict[str, str]:
            return {
                "SLURMD_NODENAME": "n1",
                "SLURM_JOB_ID": "4242",
                "SLURM_JOB_USER": "alice",
                "SLURM_JOB_UID": "1000",
                "SLURM_SCRIPT_CONTEXT": "prolog_slurmd",
                "NODECHECK_PYTHON": str(python),
                "NODECHECK_CONFIG": str(cfg),
                "NODECHECK_AGENT_SOCKET": str(sock),
            }

        variants = {
            "bare": ([str(python), "-I", "-c", "pass"], {}),
            "bare_system": (["/usr/bin/python3", "-I", "-c", "pass"], {}),
            "bare_nosite": ([str(python), "-I", "-S", "-c", "pass"], {}),
            "healthy": ([str(PROLOG)], env(cfg_ok)),
            "healthy_agent": ([str(PROLOG)], env(cfg_ok, agent_sock)),
            "healthy_module": (
                [str(python), "-I", "-m", "nodecheck", "hook", "prolog"],
                env(cfg_ok),
            ),
            "failing": ([str(PROLOG)], env(cfg_bad)),
        }
        if not os.access("/usr/bin/python3", os.X_OK):
            del variants["bare_system"]
        walls: dict[str, list[float]] = {k: [] for k in variants}
        rss: dict[str, list[int]] = {k: [] for k in variants}
        codes: dict[str, set[int]] = {k: set() for k in variants}
        calls_after: dict[str, int] = {}
        for round_no in range(args.warmup + args.runs):
            for name, (argv, environ) in variants.items():
                if name == "failing":  # a first failure each time, not a flapping node
                    shutil.rmtree(work / "state-failing", ignore_errors=True)
                before = len(calls.read_text().splitlines()) if calls.exists() else 0
                wall, maxrss, code = timed(argv, environ)
                after = len(calls.read_text().splitlines()) if calls.exists() else 0
                calls_after[name] = calls_after.get(name, 0) + (after - before)
                if round_no < args.warmup:
                    continue
                walls[name].append(wall)
                rss[name].append(maxrss)
                codes[name].add(code)
        total_rounds = args.warmup + args.runs

        verdicts = {}
        for name in ("healthy", "failing"):
            import json

            for line in (work / f"{name}.log").read_text().splitlines():
                event = json.loads(line)
                if event.get("event") == "verdict":
                    verdicts[name] = event
        results_per_status: dict[str, int] = {}
        for line in (work / "healthy.log").read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "check_result":
                results_per_status[event["status"]] = results_per_status.get(event["status"], 0) + 1

        stats = {k: summary(v) for k, v in walls.items()}
        bare = stats["bare"]["median"]
        print("nodecheck bench (figures only; lower is better)")
        print(machine_line())
        print(f"python:  {python} ({platform.python_version()})")
        compiled = REPO / "nodecheck" / "entry" / "agent-client"
        print(
            "agent client: "
            + (
                "compiled (nodecheck/entry/agent-client)"
                if compiled.exists()
                else "agent_client.py"
            )
            + f"; agent probe pool: {', '.join(pool_of(work / 'agent.log'))}"
        )
        families = {c.split(".")[0] for c in checks}
        print(f"checks registered: {len(checks)} ({', '.join(sorted(families))})")
        hv = verdicts.get("healthy", {})
        print(
            f"fixture: 8 replayed GPUs ({NVML_FIXTURE.name}), 8 IB ports (fake sysfs), "
            f"healthy verdict {hv.get('status')} with {hv.get('checks')} checks, "
            f"results per status {dict(sorted(results_per_status.items()))}"
        )
        fv = verdicts.get("failing", {})
        print(f"failing variant: reason {fv.get('reason')!r}, action {fv.get('action')!r}")
        print(f"rounds: {args.warmup} warm-up + {args.runs} measured, variants interleaved")
        print()
        print("wall time, process start to exit:")
        labels = {
            "bare": "bare `python -I -c pass` (venv)",
            "bare_system": "bare `/usr/bin/python3 -I -c pass`",
            "bare_nosite": "bare `python -I -S -c pass` (as the client)",
            "healthy": "healthy prolog, in-process (entrypoint)",
            "healthy_agent": "healthy prolog via the agent (entrypoint)",
            "healthy_module": "healthy `python -I -m nodecheck hook prolog`",
            "failing": "one failing check (drain, exit 1)",
        }
        for name, label in labels.items():
            if name not in stats:
                continue
            ratio = stats[name]["median"] / bare
            print(f"  {label:<46} {fmt_ms(stats[name])}  = {ratio:4.1f}x bare")
        print()
        print("peak RSS (wait4 ru_maxrss: largest single process of the tree, children included):")
        for name, label in labels.items():
            if name not in rss:
                continue
            values = sorted(rss[name])
            print(
                f"  {label:<46} median {statistics.median(values) / 1024:5.1f} MB  "
                f"max {values[-1] / 1024:5.1f} MB"
            )
        print()
        print("exit codes seen:", {k: sorted(v) for k, v in codes.items()})
        print("Slurm calls (recording scontrol), per run:")
        for name in ("healthy", "healthy_agent", "healthy_module", "failing"):
            per_run = calls_after.get(name, 0) / total_rounds
            print(f"  {labels[name]:<46} {per_run:g}")
        if calls.exists():
            kinds = sorted({" ".join(line.split()[:2]) for line in calls.read_text().splitlines()})
            print(f"  calls seen: {kinds}")
        print(f"agent process (workers are forks of it): {agent_memory(agent.pid)}")
        served = (work / "agent.log").read_text().count('"agent_run"')
        print(f"agent runs served: {served} (of {total_rounds} healthy_agent rounds)")
        print()
        healthy_calls = sum(
            calls_after.get(k, 0) for k in ("healthy", "healthy_agent", "healthy_module")
        )
        for name, how in (("healthy_agent", "via the agent"), ("healthy", "in-process")):
            print(
                f"HEADLINE: healthy prolog {how} {stats[name]['median'] * 1000:.1f} ms = "
                f"{stats[name]['median'] / bare:.1f}x bare start ({bare * 1000:.1f} ms); peak "
                f"RSS {statistics.median(rss[name]) / 1024:.1f} MB; Slurm calls on the healthy "
                f"path {healthy_calls}"
            )
        print()
        # Probe children would print their own imports into the same stream: measure the
        # parent with every check disabled (it loads the same modules, then forks nothing).
        cfg_parent = write_config(
            work, "parent", work / "sys-healthy", checks, scontrol, probes=False
        )
        imports = import_times(python, env(cfg_parent), args.import_runs)
        print(
            f"import time, the in-process prolog's parent (median of {args.import_runs} runs, "
            "microseconds; the probe children's own imports not included):"
        )
        print("  top 15 by cumulative time:")
        top = sorted(imports.items(), key=lambda kv: -kv[1][1])[:15]
        for name, (self_us, cum_us) in top:
            print(f"    {cum_us:8.0f} cum {self_us:7.0f} self  {name}")
        ours = sorted(
            (kv for kv in imports.items() if kv[0].strip().startswith("nodecheck")),
            key=lambda kv: -kv[1][1],
        )
        print("  nodecheck modules:")
        for name, (self_us, cum_us) in ours:
            print(f"    {cum_us:8.0f} cum {self_us:7.0f} self  {name.strip()}")
        heavy = (
            "pynvml",
            "psutil",
            "sqlite3",
            "prometheus_client",
            "pyslurm",
            "nodecheck.slurm",
            "nodecheck.run.act",
            "subprocess",
            "asyncio",
        )
        loaded = [h for h in heavy if any(n.strip() == h for n in imports)]
        print(f"  heavy modules loaded in the parent: {loaded or 'none'}")
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(10)
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
