"""fabric.peers across separate network namespaces: several test hosts on one machine.

Topology built per test and always torn down:

    ns <tag>sw : bridge brf (the "fabric") and bridge brc (the "control network")
    ns <tag>h1 : ib0 10.201.0.1/24 --veth-- f1 on brf;  eth0 10.202.0.1/24 --veth-- c1 on brc
    ns <tag>h2 ... h4 alike

Each host runs the probe in its own namespace (`ip netns exec`), all at the same time, as
the prologs of one job would. A dead fabric link is the switch-side veth set down (the
host's ib0 loses carrier: its packets go nowhere, nothing answers); a dead host is both its
links down. Traffic stays inside these namespaces. Needs root and iproute2; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("probe_host.py")
IP = shutil.which("ip") or "/usr/sbin/ip"
PORT = 18800


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([IP, *args], capture_output=True, text=True, check=check, timeout=20)


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespace tests need root"
    if not Path(IP).exists():
        return "iproute2 (ip) not installed"
    probe = f"ncprobe{uuid.uuid4().hex[:6]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create network namespaces here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


_SKIP = _netns_unavailable()
pytestmark = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")


class Lab:
    """A switch namespace with two bridges and N host namespaces wired to both."""

    def __init__(self, hosts: int) -> None:
        self.tag = f"nc{uuid.uuid4().hex[:5]}"
        self.sw = f"{self.tag}sw"
        self.hosts = {f"h{i}": f"{self.tag}h{i}" for i in range(1, hosts + 1)}
        self.made: list[str] = []

    def build(self) -> Lab:
        _ip("netns", "add", self.sw)
        self.made.append(self.sw)
        for bridge in ("brf", "brc"):
            _ip("-n", self.sw, "link", "add", bridge, "type", "bridge")
            _ip("-n", self.sw, "link", "set", bridge, "up")
        for i, (host, ns) in enumerate(self.hosts.items(), start=1):
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            for name, side, bridge, net in (("ib0", "f", "brf", 201), ("eth0", "c", "brc", 202)):
                _ip("-n", ns, "link", "add", name, "type", "veth", "peer", "name", f"{side}{i}",
                    "netns", self.sw)  # fmt: skip
                _ip("-n", self.sw, "link", "set", f"{side}{i}", "master", bridge)
                _ip("-n", self.sw, "link", "set", f"{side}{i}", "up")
                _ip("-n", ns, "addr", "add", f"10.{net}.0.{i}/24", "dev", name)
                _ip("-n", ns, "link", "set", name, "up")
            assert host == f"h{i}"
        return self

    def cut(self, host: str, network: str = "f") -> None:
        """Take the switch side of host's fabric ("f") or control ("c") link down."""
        _ip("-n", self.sw, "link", "set", f"{network}{host[1:]}", "down")

    def destroy(self) -> None:
        for ns in reversed(self.made):
            _ip("netns", "del", ns, check=False)

    def run(self, hosts: list[str], nodelist: str, timeout: float = 30, **options) -> dict:
        """Start the probe on `hosts` at once (one process per namespace); their results."""
        opts = {
            "address_template": "10.201.0.{num}",
            "control_template": "10.202.0.{num}",
            "port": PORT,
            "deadline_s": 3.0,
            **options,
        }
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = {}
        for host in hosts:
            arg = json.dumps({"node": host, "nodelist": nodelist, "options": opts})
            procs[host] = subprocess.Popen(
                [IP, "netns", "exec", self.hosts[host], sys.executable, str(SCRIPT), arg],
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
            assert proc.returncode == 0, stderr
            out[host] = json.loads(stdout)
        return out


@pytest.fixture
def lab():
    labs: list[Lab] = []

    def make(hosts: int) -> Lab:
        built = Lab(hosts)
        labs.append(built)
        return built.build()

    try:
        yield make
    finally:
        for built in labs:
            built.destroy()


def verdict(outcome: dict) -> dict:
    [result] = outcome["results"]
    return result


def test_healthy_hosts_all_pass_fast(lab):
    net = lab(4)
    got = net.run(["h1", "h2", "h3", "h4"], "h[1-4]")
    for host, outcome in got.items():
        result = verdict(outcome)
        assert result["status"] == "PASS", (host, result)
        assert result["message"].startswith("reached 3 of 3 peers")
        assert result["component"] == f"10.201.0.{host[1:]}"
        assert outcome["took_s"] < 2.0


def test_peer_not_running_the_probe_is_reached_by_its_rst(lab):
    net = lab(3)
    got = net.run(["h1", "h2"], "h[1-3]")  # h3 is up but its prolog does not probe
    for host in ("h1", "h2"):
        result = verdict(got[host])
        assert result["status"] == "PASS", result
        assert result["values"]["peers"]["h3"] == "refused"


def test_dead_fabric_link_fails_that_host_and_only_warns_the_others(lab):
    net = lab(4)
    net.cut("h3", "f")
    got = net.run(["h1", "h2", "h3", "h4"], "h[1-4]")
    broken = verdict(got["h3"])
    assert broken["status"] == "FAIL", broken
    assert broken["message"].startswith("reached none of 3 peers over the fabric")
    assert "3 answer on the control network" in broken["message"]
    for host in ("h1", "h2", "h4"):
        result = verdict(got[host])
        assert result["status"] == "WARN", (host, result)
        assert result["message"].startswith("no answer from h3 (timeout)")
        assert got[host]["took_s"] < 3.0 + 1.5  # never longer than the deadline (+ slack)


def test_host_that_does_not_answer_at_all_is_never_a_reason_to_drain_the_others(lab):
    net = lab(4)
    net.cut("h4", "f")
    net.cut("h4", "c")  # h4 is dead: no fabric, no control
    got = net.run(["h1", "h2", "h3"], "h[1-4]")
    for host in ("h1", "h2", "h3"):
        result = verdict(got[host])
        assert result["status"] == "WARN", (host, result)
        assert "h4 (timeout)" in result["message"]


def test_two_node_job_cannot_tell_which_end_is_broken(lab):
    net = lab(2)
    net.cut("h2", "f")
    got = net.run(["h1", "h2"], "h[1-2]")
    for host in ("h1", "h2"):
        result = verdict(got[host])
        assert result["status"] == "WARN", (host, result)
        assert "too few peers known up" in result["message"]


def test_without_a_control_network_silence_is_only_a_warning(lab):
    net = lab(3)
    net.cut("h1", "f")
    got = net.run(["h1", "h2", "h3"], "h[1-3]", control_template="")
    result = verdict(got["h1"])
    assert result["status"] == "WARN", result
    assert "no control network configured" in result["message"]


def test_namespaces_are_cleaned_up(lab):
    net = lab(1)
    names = set(net.made)
    net.destroy()
    listed = _ip("netns", "list").stdout
    assert not any(name in listed.split() for name in names)
