"""fabric.preflight across network namespaces: the real check on every test host at once,
as the prologs of one job (PrologFlags=Alloc) would run it; a slow host is a `tbf` rate
limit on its fabric interface (its sending side), a host that never joins simply does not
run the check. tests/netns/test_preflight_slurm.py does the same under a real Slurm.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lab import SKIP, Lab

SCRIPT = Path(__file__).with_name("preflight_host.py")
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A root-only key, as /etc/munge/munge.key is on a node (mode 0400)."""
    path = tmp_path / "site.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    os.write(fd, os.urandom(64))
    os.close(fd)
    return path


def run_preflight(net: Lab, hosts: list[str], nodelist: str, key: Path, **options) -> dict:
    opts = {
        "address_template": "10.201.0.{num}",
        "key_file": str(key),
        "join_s": 2.0,
        "measure_s": 5.0,
        **options,
    }
    got = net.run_script(
        hosts,
        SCRIPT,
        lambda host: json.dumps({"node": host, "nodelist": nodelist, "options": opts}),
        30,
    )
    return {host: out["results"][0] for host, out in got.items()}


def test_healthy_hosts_pass_with_one_verdict(lab, key_file):
    net = lab(4)
    got = run_preflight(net, ["h1", "h2", "h3", "h4"], "h[1-4]", key_file)
    messages = {r["message"] for r in got.values()}
    assert all(r["status"] == "PASS" for r in got.values()), got
    assert len(messages) == 1 and messages.pop().startswith("4 nodes, ring pairs at ")
    assert got["h1"]["values"]["role"] == "coordinator"
    assert set(got["h2"]["values"]["pairs"]) == {"h1-h2", "h2-h3", "h3-h4", "h1-h4"}


def test_slow_host_fails_alone_with_its_figure(lab, key_file):
    net = lab(4)
    net.limit("h3", "8mbit")
    got = run_preflight(net, ["h1", "h2", "h3", "h4"], "h[1-4]", key_file)
    assert got["h3"]["status"] == "FAIL", got
    assert "slow fabric: " in got["h3"]["message"]
    assert "allocation's healthy median" in got["h3"]["message"]
    # 8 Mbit/s is 1 MB/s: the figure says so, whatever the healthy pairs reach here
    assert got["h3"]["values"]["bps"] < 2e6
    for host in ("h1", "h2", "h4"):
        assert got[host]["status"] == "PASS", got[host]
        assert got[host]["values"]["slow_nodes"] == ["h3"]


def test_a_host_that_never_joins_makes_it_incomplete(lab, key_file):
    net = lab(3)
    got = run_preflight(net, ["h1", "h2"], "h[1-3]", key_file, join_s=1.0)
    for result in got.values():
        assert result["status"] == "WARN", result
        assert result["message"] == "preflight incomplete: h3 never joined (2 of 3 nodes)"


def test_two_hosts_cannot_say_which_end_is_slow(lab, key_file):
    net = lab(2)
    net.limit("h2", "8mbit")
    got = run_preflight(net, ["h1", "h2"], "h[1-2]", key_file)
    for result in got.values():
        assert result["status"] == "WARN", result
        assert "two nodes cannot say which end is slow" in result["message"]


def test_a_host_without_the_key_is_not_let_in(lab, key_file, tmp_path):
    other = tmp_path / "other.key"
    fd = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    os.write(fd, os.urandom(64))
    os.close(fd)
    net = lab(2)
    opts = {"address_template": "10.201.0.{num}", "join_s": 1.0, "measure_s": 2.0}
    got = net.run_script(
        ["h1", "h2"],
        SCRIPT,
        lambda host: json.dumps(
            {
                "node": host,
                "nodelist": "h[1-2]",
                "options": {**opts, "key_file": str(key_file if host == "h1" else other)},
            }
        ),
        30,
    )
    h1, h2 = (got[h]["results"][0] for h in ("h1", "h2"))
    assert h1["status"] == "WARN" and "h2 never joined" in h1["message"], h1
    assert h2["status"] == "WARN" and "coordinator h1 not reached" in h2["message"], h2
