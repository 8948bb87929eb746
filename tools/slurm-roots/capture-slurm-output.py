#!/usr/bin/env python3
"""Capture real node-state output of the Slurm installed here, as test fixtures.

Starts a throw-away 4-node cluster (tools/testcluster.py), puts its nodes in the states
nodecheck must read (drained by nodecheck, drained by an admin with a reason full of spaces
and '=', a node with a running job drained, one idle), then saves what Slurm prints:

    scontrol-show-node.txt            scontrol show node
    scontrol-show-node-n1.txt         scontrol show node n1
    scontrol-json-show-node.json      scontrol --json show node      (where the release has it)
    scontrol-json-show-node-n1.json   scontrol --json show node n1
    scontrol-json-show-node-unknown.json  scontrol --json show node n99 (a node Slurm lacks)
    sinfo-json.json                   sinfo --json
    scontrol-help.txt                 scontrol --help (what nodecheck's capability test reads)
    SOURCE.md                         release, package version, date, each command's exit status

into OUT/<major.minor>/. Text files get a '#' header naming their source (the fixture loader in
tests strips it); JSON files are kept byte for byte and SOURCE.md names their source.

    python3 tools/slurm-roots/capture-slurm-output.py OUT              # Slurm on this host
    NODECHECK_ROOT_OUT=tests/fixtures/real/slurm bash tools/slurm-roots/in-root.sh \\
      ROOT python3 /src/tools/slurm-roots/capture-slurm-output.py /out
Root only (the cluster's daemons run as root).
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import testcluster

OURS = "nodecheck: gpu.ecc gpu3: 2 uncorrectable ECC errors (volatile DBE) [prolog job 4242]"
ADMIN = "RMA gpu3 ticket=1234: State=RESUME is not for you, ask ops"
ON_JOB = "nodecheck: ib.port mlx5_0/1: state 1: DOWN, phys_state 2: Polling [epilog job 7]"


def package_version() -> str:
    res = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "slurmctld"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return res.stdout.strip() or "unknown"


def os_name() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip('"')
    return "unknown"


def main(out_root: Path) -> int:
    major, minor, patch = testcluster.slurm_version()
    series = f"{major}.{minor:02d}"
    out = out_root / series
    out.mkdir(parents=True, exist_ok=True)
    release = f"Slurm {major}.{minor:02d}.{patch} (Debian slurm-wlm {package_version()})"
    where = f"{os_name()}"
    today = datetime.date.today().isoformat()
    header = (
        f"# Real output of {release} on {where}, captured {today} from a live 4-node test\n"
        "# cluster by tools/slurm-roots/capture-slurm-output.py (n1 drained by nodecheck, n2\n"
        "# drained by an admin, n3 drained while running a job, n4 idle). Verbatim below.\n"
    )
    ran: list[str] = []
    # Directly under /tmp: in-namespace.sh's teardown stops clusters it finds at /tmp/*/.
    with tempfile.TemporaryDirectory(prefix="capture-cluster-", dir="/tmp") as state_dir:
        cluster = testcluster.TestCluster(state_dir, nodes=4)
        with cluster:
            cluster.drain("n1", OURS)
            cluster.drain("n2", ADMIN)
            job = cluster.sbatch("-w", "n3", "-o", "/dev/null", "--wrap", "sleep 600")
            cluster.wait_for(lambda: cluster.job_state(job) == "RUNNING", message="job running")
            cluster.drain("n3", ON_JOB)
            show, show_json = ["scontrol", "show", "node"], ["scontrol", "--json", "show", "node"]
            commands = {
                "scontrol-show-node.txt": show,
                "scontrol-show-node-n1.txt": [*show, "n1"],
                "scontrol-json-show-node.json": show_json,
                "scontrol-json-show-node-n1.json": [*show_json, "n1"],
                "scontrol-json-show-node-unknown.json": [*show_json, "n99"],
                "sinfo-json.json": ["sinfo", "--json"],
                "scontrol-help.txt": ["scontrol", "--help"],
            }
            for name, argv in commands.items():
                res = cluster.run(argv, check=False)
                status = f"exit {res.returncode}"
                if res.returncode != 0:
                    detail = (res.stderr or res.stdout).strip().splitlines()[:1]
                    ran.append(f"- `{' '.join(argv)}`: {status}: {' '.join(detail)} (not kept)")
                    continue
                text = res.stdout
                if name.endswith(".txt"):
                    text = header + text
                (out / name).write_text(text)
                ran.append(f"- `{name}`: `{' '.join(argv)}` ({status})")
            cluster.run(["scancel", str(job)], check=False)
    (out / "SOURCE.md").write_text(
        f"# Slurm {series}: real output\n\n"
        f"{release} on {where}, captured {today} by `tools/slurm-roots/capture-slurm-output.py`\n"
        "from a live 4-node test cluster (tools/testcluster.py): n1 drained with a nodecheck\n"
        f"reason, n2 drained by an admin (`{ADMIN}`), n3 drained while job {job} ran on it,\n"
        "n4 idle. Files are verbatim; `.txt` files carry a `#` header the tests strip.\n\n"
        + "\n".join(ran)
        + "\n"
    )
    print(f"captured {release} into {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
