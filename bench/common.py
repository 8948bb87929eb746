"""What the bench scripts share: the line saying which machine the figures come from, the
test cluster (tools/testcluster.py) loaded by path, and slurmctld's own RPC counts (sdiag).

Each script puts the repository on sys.path and imports `bench.common`: run as
`bench/<name>.py`, its own folder comes first on the path and holds a bench.py.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
SLURMCTLD = "/usr/sbin/slurmctld"  # where `make install` puts it


def cpu_model() -> str:
    """/proc/cpuinfo's model name, or the platform's word for the processor."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def slurm_version() -> str:
    """`slurmctld -V` (e.g. 'slurm-wlm 22.05.8'), or '' where there is none."""
    try:
        got = subprocess.run([SLURMCTLD, "-V"], capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return got.stdout.strip()


def machine_line(*, slurm: bool = False) -> str:
    """What the figures were measured on: host, CPUs, memory, kernel, (Slurm,) and the
    load when this was printed (a loaded box slows every figure)."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parts = [
        f"nproc {os.cpu_count()}",
        cpu_model(),
        f"{mem:.0f} GiB",
        f"{platform.system()} {platform.release()}",
    ]
    if slurm and (version := slurm_version()):
        parts.append(version)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: {platform.node()}: {', '.join(parts)}, load average {load}"


def load_testcluster() -> ModuleType:
    """tools/testcluster.py as module `testcluster` (tools/ is no package)."""
    tools = str(REPO / "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)  # testcluster imports testcluster_accounting
    spec = importlib.util.spec_from_file_location("testcluster", REPO / "tools" / "testcluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["testcluster"] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Sdiag:
    """slurmctld's RPC statistics since its last reset (`sdiag`; `sdiag -r` resets them)."""

    by_type: dict[str, int]  # message type -> count
    by_user: dict[str, int]  # user -> count
    dbd_queue: int  # DBD agent queue size; -1 where sdiag did not say
    ave_us: dict[str, int]  # message type -> mean time slurmctld spent on one (us)


_RPC = re.compile(r"^\s*(\S+)\s+\(\s*\d+\)\s+count:(\d+)(?:\s+ave_time:(\d+))?", re.M)


def parse_sdiag(text: str) -> Sdiag:
    by_type = text.split("by message type", 1)[1].split("by user", 1)[0]
    by_user = text.split("by user", 1)[1].split("Pending RPC", 1)[0]
    queue = re.search(r"DBD Agent queue size:\s*(\d+)", text)
    types = list(_RPC.finditer(by_type))
    return Sdiag(
        by_type={m[1]: int(m[2]) for m in types},
        by_user={m[1]: int(m[2]) for m in _RPC.finditer(by_user)},
        dbd_queue=int(queue[1]) if queue else -1,
        ave_us={m[1]: int(m[3]) for m in types if m[3] is not None},
    )
