"""`nodecheck report`: only nodecheck's drains, with check, component, since, how often."""

from __future__ import annotations

import json
import time

from nodecheck.core.node import NodeInfo
from nodecheck.entry.cli import main
from nodecheck.store import history

OURS = (
    "nodecheck: gpu.ecc gpu3: 2 uncorrectable ECC errors [prolog job 41 sev=critical act=replace]"
)
FLAP = (
    "nodecheck: ib.port mlx5_0/1: flapping (drained 5x in 24h) port state DOWN "
    "[health sev=high act=check-cable]"
)


class Fake:
    name = "fake"

    def list_nodes(self):
        when = "2026-11-25T10:00:00"
        return [
            NodeInfo("n4", ("IDLE", "DRAIN"), FLAP, "root", when),
            NodeInfo("n1", ("IDLE", "DRAIN"), OURS, "root", when),
            NodeInfo("n2", ("IDLE", "DRAIN"), "PSU swap, do not touch", "alice", when),
            NodeInfo("n3", ("IDLE",), ""),
            NodeInfo("n5", ("DOWN",), OURS),  # down, not drained: not a nodecheck drain
        ]


def test_report_lists_exactly_the_nodecheck_drains(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("nodecheck.run.act.backend_for", lambda config, env: Fake())
    cfg = tmp_path / "nodecheck.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/state/{{node}}"\nmetrics_file = ""\n')

    def drained_twice(h):
        with h.write():
            for _ in range(2):
                h.add_event("drain", OURS, time.time())

    history.with_history(tmp_path / "state" / "n1", drained_twice)
    assert main(["--config", str(cfg), "report", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["count"] == 2
    n1, n4 = doc["nodes"]
    assert (n1["node"], n1["check"], n1["component"], n1["job"]) == ("n1", "gpu.ecc", "gpu3", "41")
    assert n1["since"] == "2026-11-25T10:00:00" and not n1["flapping"]
    assert (n1["drains_in_window"], n1["drains_source"]) == (2, "history")
    assert (n4["check"], n4["component"], n4["flapping"]) == ("ib.port", "mlx5_0/1", True)
    assert (n4["drains_in_window"], n4["drains_source"]) == (5, "reason")
    assert not (tmp_path / "state" / "n4").exists()  # report never creates state

    assert main(["--config", str(cfg), "report"]) == 0
    text = capsys.readouterr().out
    assert "n1" in text and "n4" in text and "PSU swap" not in text
    assert text.strip().endswith("2 node(s) drained by nodecheck: n[1,4]")
