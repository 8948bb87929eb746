"""fabric.peers across separate network namespaces: several test hosts on one machine.

The hosts are tests/netns/lab.py's: a fabric and a control network, four hosts at most.
Each host runs the probe in its own namespace, all at the same time, as the prologs of one
job would. A dead fabric link is the switch-side veth set down (the host's ib0 loses
carrier: its packets go nowhere, nothing answers); a dead host is both its links down.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lab import SKIP, Lab, ip_run

SCRIPT = Path(__file__).with_name("probe_host.py")
PORT = 18800
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


def run_peers(net: Lab, hosts: list[str], nodelist: str, timeout: float = 30, **options) -> dict:
    """Start the probe on `hosts` at once (one process per namespace); their results."""
    opts = {
        "address_template": "10.201.0.{num}",
        "control_template": "10.202.0.{num}",
        "port": PORT,
        "deadline_s": 3.0,
        **options,
    }
    return net.run_script(
        hosts,
        SCRIPT,
        lambda host: json.dumps({"node": host, "nodelist": nodelist, "options": opts}),
        timeout,
    )


def verdict(outcome: dict) -> dict:
    [result] = outcome["results"]
    return result


def test_healthy_hosts_all_pass_fast(lab):
    net = lab(4)
    got = run_peers(net, ["h1", "h2", "h3", "h4"], "h[1-4]")
    for host, outcome in got.items():
        result = verdict(outcome)
        assert result["status"] == "PASS", (host, result)
        assert result["message"].startswith("reached 3 of 3 peers")
        assert result["component"] == f"10.201.0.{host[1:]}"
        assert outcome["took_s"] < 2.0


def test_peer_not_running_the_probe_is_reached_by_its_rst(lab):
    net = lab(3)
    got = run_peers(net, ["h1", "h2"], "h[1-3]")  # h3 is up but its prolog does not probe
    for host in ("h1", "h2"):
        result = verdict(got[host])
        assert result["status"] == "PASS", result
        assert result["values"]["peers"]["h3"] == "refused"


def test_dead_fabric_link_fails_that_host_and_only_warns_the_others(lab):
    net = lab(4)
    net.cut("h3", "f")
    got = run_peers(net, ["h1", "h2", "h3", "h4"], "h[1-4]")
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
    got = run_peers(net, ["h1", "h2", "h3"], "h[1-4]")
    for host in ("h1", "h2", "h3"):
        result = verdict(got[host])
        assert result["status"] == "WARN", (host, result)
        assert "h4 (timeout)" in result["message"]


def test_two_node_job_cannot_tell_which_end_is_broken(lab):
    net = lab(2)
    net.cut("h2", "f")
    got = run_peers(net, ["h1", "h2"], "h[1-2]")
    for host in ("h1", "h2"):
        result = verdict(got[host])
        assert result["status"] == "WARN", (host, result)
        assert "too few peers known up" in result["message"]


def test_without_a_control_network_silence_is_only_a_warning(lab):
    net = lab(3)
    net.cut("h1", "f")
    got = run_peers(net, ["h1", "h2", "h3"], "h[1-3]", control_template="")
    result = verdict(got["h1"])
    assert result["status"] == "WARN", result
    assert "no control network configured" in result["message"]


def test_namespaces_are_cleaned_up(lab):
    net = lab(1)
    names = set(net.made)
    net.destroy()
    listed = ip_run("netns", "list").stdout
    assert not any(name in listed.split() for name in names)
