"""Circuit breaker on a real 8-node Slurm: a failure on every node at once (a bad config push)
must not drain past the breaker's limit by ANY route. nodecheck drains up to the limit, the
rest fail open (the prolog and epilog exit 0, jobs run, no "Prolog error" drain), and
`nodecheck report` names the held-back nodes. When the breaker closes again, only the nodes
still failing are drained, within the limit.

Two ways a site runs it: with slurmdbd and the `nodecheck_breaker` license declared (the
breaker's slots are license-only reservations, nodecheck's drains counted from slurmdbd's
node events), and with neither (the slots reserve the draining node, the drains counted
from the node table). Either way no node drains and then backs off (no flap): a node drains
only once it holds a slot."""

from __future__ import annotations

import json

import pytest
from nc_cluster import EPILOG, HEALTH, PROLOG, events, health, nodecheck_cli

NODES = [f"n{i}" for i in range(1, 9)]


def config(tmp_path, broken: list[str]) -> str:
    names = ", ".join(f'"{n}"' for n in broken)
    return f"""
log_file = "{tmp_path}/nodecheck.log"
state_dir = "{tmp_path}/state/{{node}}"
metrics_file = "{tmp_path}/metrics/{{node}}.prom"
slurm_backend = "scontrol"
budget_s = 15
resume_after_passes = 1
breaker_max_share = 0.25   # 8 nodes: nodecheck may drain 2
breaker_floor = 1
breaker_max_drains = 0
[[node_class]]
name = "pushed-bad-config"
match = [{names}]
[node_class.checks."host.mounts"]
required = ["/mount-that-a-bad-push-expects"]
"""


def reasons(cluster) -> dict[str, str]:
    return {n: cluster.node_state(n)[1] for n in NODES}


def slots(cluster) -> dict[str, str]:
    """The breaker's live slots: reservation name -> the line scontrol shows."""
    out = cluster.scontrol("show", "-o", "reservation").stdout
    return {
        line.split()[0].partition("=")[2]: line
        for line in out.splitlines()
        if line.startswith("ReservationName=nodecheck_breaker_")
    }


@pytest.mark.parametrize("site", ["license+slurmdbd", "bare"])
def test_breaker_fails_open_and_drains_only_what_still_fails_once_closed(
    make_slurm_cluster, tmp_path, site
):
    tmp_path.chmod(0o755)
    # The test cluster declares the nodecheck_breaker license unless told not to.
    extra: dict = {"conf_overrides": {"Licenses": ""}}
    if site == "license+slurmdbd":
        extra = {"accounting": True}
    cluster = make_slurm_cluster(
        nodes=8, prolog=PROLOG, epilog=EPILOG, health_program=HEALTH, **extra
    )
    cluster.write_nodecheck_config(config(tmp_path, NODES))
    jobs = {n: cluster.sbatch("-w", n, "--wrap", "sleep 3") for n in NODES}

    def every_epilog_or_drain():
        states = cluster.node_states()
        done = {e["node"] for e in events(tmp_path, "verdict", phase="epilog")}
        return all(n in done or states.get(n, "").startswith("drain") for n in NODES)

    cluster.wait_for(every_epilog_or_drain, 90, message="every prolog, job and epilog done")
    found = reasons(cluster)
    ours = sorted(n for n, r in found.items() if r.startswith("nodecheck:"))
    by_slurm = sorted(n for n, r in found.items() if r and not r.startswith("nodecheck:"))
    held = sorted(set(NODES) - set(ours))
    # The breaker held nodecheck to its limit and nothing else drained: no "Prolog error",
    # no "Epilog error"; the six other jobs ran to the end on their failing nodes.
    assert len(ours) == 2, found
    assert by_slurm == [], found
    # Exactly the two drains took a slot, and nothing was drained and then resumed.
    claimed = events(tmp_path, "breaker_slot_claimed")
    assert sorted(e["node"] for e in claimed) == ours, claimed
    assert not [e for e in events(tmp_path, "verdict") if e.get("action") == "resumed"]
    live = slots(cluster)
    assert len(live) == 2, live
    if site == "license+slurmdbd":  # no node reserved: Features= names the holder
        assert all(
            "Nodes=(null)" in line and "Licenses=nodecheck_breaker:1" in line
            for line in live.values()
        ), live
        assert sorted(line.split("Features=")[1].split()[0] for line in live.values()) == ours
        assert not events(tmp_path, "breaker_license_missing")
        assert not events(tmp_path, "slurmdbd_unread")
    else:
        assert sorted(line.split(" Nodes=")[1].split()[0] for line in live.values()) == ours
        assert events(tmp_path, "breaker_license_missing")
    # (the epilog's verdict is logged just before it exits; Slurm then ends COMPLETING)
    cluster.wait_for(
        lambda: all(cluster.job_state(jobs[n]) == "COMPLETED" for n in held),
        30,
        message="the jobs on the held-back nodes completed",
    )
    tripped = events(tmp_path, "circuit_breaker_open")
    assert {e["node"] for e in tripped} == set(held)
    assert all(e["level"] == "error" and "partition debug" in e["why"] for e in tripped)
    assert {e["phase"] for e in tripped} == {"prolog", "epilog"}
    prolog_exits = {e["node"]: e["exit_code"] for e in events(tmp_path, "verdict", phase="prolog")}
    assert all(prolog_exits[n] == 0 for n in held), prolog_exits

    report = json.loads(nodecheck_cli(cluster, "report", "--json").stdout)
    assert sorted(r["node"] for r in report["nodes"]) == ours
    [debug] = report["breaker"]
    assert debug["open"] and (debug["drained"], debug["total"]) == (2, 8)
    assert sorted(h["node"] for h in report["held_back"]) == held
    assert all(h["since"] and "partition debug" in h["why"] for h in report["held_back"])
    assert report["held_by_slurm"] == []
    text = nodecheck_cli(cluster, "report").stdout
    assert "CIRCUIT BREAKER OPEN in partition debug" in text
    assert "6 node(s) held back by the circuit breaker" in text

    # The fault is fixed on 4 nodes: the two nodecheck drained and two of the held ones.
    fixed = ours + held[:2]
    still = held[2:]
    cluster.write_nodecheck_config(config(tmp_path, still))
    for node in ours:
        assert health(cluster, node)["action"] == "resumed"
    assert slots(cluster) == {}, "a resume gives its share slot back"
    for node in held[:2]:
        assert health(cluster, node)["action"] == "none"
    # The breaker has closed (nothing drained by nodecheck now): the still-failing nodes
    # drain, one by one, until the limit; the rest stay held back.
    actions = {node: health(cluster, node)["action"] for node in still}
    assert list(actions.values()) == ["drained", "drained", "breaker open", "breaker open"]
    found = reasons(cluster)
    assert all(not found[n] for n in fixed), found
    drained_now = [n for n in still if found[n].startswith("nodecheck:")]
    assert drained_now == still[:2], found
    assert all(" held=" in found[n] for n in drained_now), found
    assert not any(r and not r.startswith("nodecheck:") for r in found.values()), found
    report = json.loads(nodecheck_cli(cluster, "report", "--json").stdout)
    assert sorted(h["node"] for h in report["held_back"]) == still[2:]
