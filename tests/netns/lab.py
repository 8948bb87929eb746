"""Test hosts in network namespaces with real kernel networking, shared by the netns tests.

Topology built per test and always torn down:

    ns <tag>sw : bridge brf (the "fabric") and bridge brc (the "control network")
    ns <tag>h1 : ib0 10.201.0.1/24 --veth-- f1 on brf;  eth0 10.202.0.1/24 --veth-- c1 on brc
    ns <tag>h2 ... h4 alike

Each host runs its test script in its own namespace (`ip netns exec`), all at the same time,
as the prologs of one job would. A dead link is the switch-side veth set down (the host's
interface loses carrier); a slow one a `tbf` rate limit on the host's side (this kernel has
tbf, not netem). Traffic stays inside these namespaces. Needs root and iproute2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IP = shutil.which("ip") or "/usr/sbin/ip"


def ip_run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([IP, *args], capture_output=True, text=True, check=check, timeout=20)


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespace tests need root"
    if not Path(IP).exists():
        return "iproute2 (ip) not installed"
    probe = f"ncprobe{uuid.uuid4().hex[:6]}"
    made = ip_run("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create network namespaces here: {made.stderr.strip()}"
    ip_run("netns", "del", probe, check=False)
    return None


SKIP = _netns_unavailable()


class Lab:
    """A switch namespace with two bridges and N host namespaces wired to both."""

    def __init__(self, hosts: int) -> None:
        self.tag = f"nc{uuid.uuid4().hex[:5]}"
        self.sw = f"{self.tag}sw"
        self.hosts = {f"h{i}": f"{self.tag}h{i}" for i in range(1, hosts + 1)}
        self.made: list[str] = []

    def build(self) -> Lab:
        ip_run("netns", "add", self.sw)
        self.made.append(self.sw)
        for bridge in ("brf", "brc"):
            ip_run("-n", self.sw, "link", "add", bridge, "type", "bridge")
            ip_run("-n", self.sw, "link", "set", bridge, "up")
        for i, (host, ns) in enumerate(self.hosts.items(), start=1):
            ip_run("netns", "add", ns)
            self.made.append(ns)
            ip_run("-n", ns, "link", "set", "lo", "up")
            for name, side, bridge, net in (("ib0", "f", "brf", 201), ("eth0", "c", "brc", 202)):
                ip_run("-n", ns, "link", "add", name, "type", "veth", "peer", "name", f"{side}{i}",
                    "netns", self.sw)  # fmt: skip
                ip_run("-n", self.sw, "link", "set", f"{side}{i}", "master", bridge)
                ip_run("-n", self.sw, "link", "set", f"{side}{i}", "up")
                ip_run("-n", ns, "addr", "add", f"10.{net}.0.{i}/24", "dev", name)
                ip_run("-n", ns, "link", "set", name, "up")
            assert host == f"h{i}"
        return self

    def cut(self, host: str, network: str = "f") -> None:
        """Take the switch side of host's fabric ("f") or control ("c") link down."""
        ip_run("-n", self.sw, "link", "set", f"{network}{host[1:]}", "down")

    def destroy(self) -> None:
        for ns in reversed(self.made):
            ip_run("netns", "del", ns, check=False)

    def run_script(
        self, hosts: list[str], script: Path, arg_for: Callable[[str], str], timeout: float = 30
    ) -> dict[str, dict]:
        """Start `script` on `hosts` at once, one process in each host's namespace, with the
        JSON argument `arg_for(host)` (an argument list, no shell); each one's JSON output."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = {}
        for host in hosts:
            procs[host] = subprocess.Popen(
                [IP, "netns", "exec", self.hosts[host], sys.executable, str(script), arg_for(host)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=REPO,
            )
        out = {}
        for host, proc in procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            assert proc.returncode == 0, stderr[-2000:]
            out[host] = json.loads(stdout)
        return out

    def connect_root(self, address: str = "10.202.0.254") -> str:
        """A veth from the root namespace into the control bridge, `address` on the root's
        side (a test cluster's slurmctld is announced there); gone with the switch."""
        name = f"{self.tag}r"
        ip_run("link", "add", name, "type", "veth", "peer", "name", "cr", "netns", self.sw)
        ip_run("-n", self.sw, "link", "set", "cr", "master", "brc")
        ip_run("-n", self.sw, "link", "set", "cr", "up")
        ip_run("addr", "add", f"{address}/24", "dev", name)
        ip_run("link", "set", name, "up")
        return address

    def limit(self, host: str, rate: str = "10mbit") -> None:
        """A `tbf` rate limit on the host's own fabric interface (its sending side)."""
        ip_run("netns", "exec", self.hosts[host], "tc", "qdisc", "add", "dev", "ib0", "root",
            "tbf", "rate", rate, "burst", "32kbit", "latency", "50ms")  # fmt: skip
