"""deep.fabric between four network-namespace hosts with real kernel networking.

The hosts are the Lab of test_peers_netns (veth pairs on a bridge in a switch namespace).
One host's fabric veth gets a `tbf` rate limit (this kernel has no netem): the pairwise
test must name exactly that host, and no healthy one. Each rank is a process started in
its namespace with an argument list, running torch.distributed with gloo over ib0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_peers_netns import _SKIP, IP, REPO, Lab, lab  # noqa: F401

pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")

SCRIPT = Path(__file__).with_name("deep_fabric_host.py")
PORT = 29617


def limit(net: Lab, host: str) -> None:
    """10 Mbit/s on the host's own fabric interface (its sending side)."""
    subprocess.run(
        [IP, "netns", "exec", net.hosts[host], "tc", "qdisc", "add", "dev", "ib0", "root",
         "tbf", "rate", "10mbit", "burst", "32kbit", "latency", "50ms"],
        check=True, capture_output=True, timeout=20,
    )  # fmt: skip


def run_all(net: Lab, hosts: list[str], timeout: float = 120) -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = {}
    for host in hosts:
        arg = json.dumps({
            "node": host, "nodelist": f"h[1-{len(hosts)}]", "address_template": "10.201.0.{num}",
            "interface": "ib0", "port": PORT, "join_timeout_s": 60, "collective_bytes": 16384,
            "pair_bytes": 256 * 1024, "repeats": 2, "slow_fraction": 0.5,
        })  # fmt: skip
        procs[host] = subprocess.Popen(
            [IP, "netns", "exec", net.hosts[host], sys.executable, str(SCRIPT), arg],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )  # fmt: skip
    out = {}
    for host, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        assert proc.returncode == 0, stderr[-2000:]
        out[host] = json.loads(stdout)["result"]
    return out


def test_the_rate_limited_host_is_named_and_no_healthy_one(lab):  # noqa: F811
    net = lab(4)
    limit(net, "h3")
    got = run_all(net, ["h1", "h2", "h3", "h4"])
    statuses = {host: r["status"] for host, r in got.items()}
    assert statuses == {"h1": "PASS", "h2": "PASS", "h3": "FAIL", "h4": "PASS"}, got
    for result in got.values():
        assert result["values"]["slow_nodes"] == ["h3"]
        assert result["component"] in ("h1", "h2", "h3", "h4")
    assert got["h3"]["message"].startswith("slow fabric:")
    assert set(got["h1"]["values"]["second_pass"]) == {"h1-h3"}


def test_healthy_hosts_all_pass_and_report_figures(lab):  # noqa: F811
    net = lab(4)
    got = run_all(net, ["h1", "h2", "h3", "h4"])
    for host, result in got.items():
        assert result["status"] == "PASS", (host, result)
        values = result["values"]
        assert values["slow_nodes"] == [] and values["allreduce_busbw_gbps"] > 0
        assert values["latency_us"] > 0 and len(values["pairs"]) == 4
