"""Rack consistency (nodecheck/run/rack.py, `nodecheck domain`): the readings are the JSON of
real `nodecheck run --check gpu.fabric --check gpu.nvlink` runs on replayed GB200 trays
(tests/fixtures/nvml/gb200-*.json), the domains Slurm's blocks (topology.conf); the odd tray
is named, not the rack, and a rack whose domain is not up is the rack's fault."""

import json
from pathlib import Path

import pytest
from helpers import NVML_FIXTURES

from nodecheck.entry.cli import _outcome_json, main
from nodecheck.run.pipeline import RunRequest, execute
from nodecheck.run.rack import ALL, Reading, judge, parse_documents, readings_from_runs

TOPOLOGY = Path(__file__).parents[1] / "fixtures" / "real" / "slurm" / "topology"
CONF = TOPOLOGY / "topology-block-nvl72.conf"
DOMAIN = "9c6f5af3-53bf-49b5-a436-b66766c413c3"

pytestmark = pytest.mark.usefixtures("fresh_nvml_cache")


def _tray_in_clique(tmp_path: Path, clique: int) -> Path:
    """The published GB200 tray with every GPU registered in another clique (partition)."""
    data = json.loads((NVML_FIXTURES / "gb200-healthy.json").read_text())
    for gpu in data["gpus"]:
        gpu["fabric"]["cliqueId"] = clique
    path = tmp_path / f"gb200-clique-{clique}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def rack_runs(tmp_path_factory) -> str:
    """`nodecheck run --json` of rack nvl72a (gb001-018; gb007 in another clique, gb011's
    gpu3 split off) and of 3 trays of rack nvl72b, whose domain is not up."""
    tmp = tmp_path_factory.mktemp("rack")
    config = tmp / "nodecheck.toml"
    config.write_text(
        f'state_dir = "{tmp}/state-{{node}}"\nmetrics_file = ""\nlog_target = "stderr"\n'
        f'nvml = "replay:{NVML_FIXTURES}/gb200-healthy.json"\n'
        f'[checks."gpu.fabric"]\nimex = "off"\ntopology_file = "{CONF}"\n'
        f'[[node_class]]\nname = "odd"\nmatch = "gb007"\n'
        f'nvml = "replay:{_tray_in_clique(tmp, 4027)}"\n'
        f'[[node_class]]\nname = "split"\nmatch = "gb011"\n'
        f'nvml = "replay:{NVML_FIXTURES}/gb200-clique-split.json"\n'
        f'[[node_class]]\nname = "down"\nmatch = "gb[019-021]"\n'
        f'nvml = "replay:{NVML_FIXTURES}/gb200-fabric-in-progress.json"\n'
    )
    docs = []
    for n in [*range(1, 19), 19, 20, 21]:
        out = execute(
            RunRequest(
                phase="manual",
                env={"SLURMD_NODENAME": f"gb{n:03d}"},
                config_path=str(config),
                check_patterns=("gpu.fabric", "gpu.nvlink"),
            )
        )
        docs.append(json.dumps(_outcome_json(out), indent=2))
    return "\n".join(docs)  # as srun prints them, one document after another


def test_the_odd_trays_are_named_and_a_rack_without_its_domain_is_the_racks(rack_runs):
    readings = readings_from_runs(parse_documents(rack_runs))
    verdicts = {v.domain: v for v in judge(readings)}  # the domain each node's run read
    a, b = verdicts["nvl72a"], verdicts["nvl72b"]
    assert a.key == (DOMAIN, 4026) and len(a.nodes) == 18 and not a.whole
    assert [(o.node, o.why) for o in a.odd] == [
        ("gb007", "clique 4027, the rest of nvl72a: clique 4026"),
        (
            "gb011",
            f"its GPUs are in several NVLink domains or cliques "
            f"({DOMAIN} clique 4026; {DOMAIN} clique 4027)",
        ),
    ]
    assert b.key is None and not b.odd
    assert b.whole == "no NVLink domain shared by most of its 3 nodes (seen: none)"


def test_slurms_blocks_decide_the_domains_and_name_the_nodes_without_a_reading(rack_runs):
    from nodecheck.probes.slurm_topology import node_blocks, read_blocks

    readings = readings_from_runs(parse_documents(rack_runs))
    verdicts = {v.domain: v for v in judge(readings, node_blocks(read_blocks(CONF)))}
    assert [o.node for o in verdicts["nvl72a"].odd] == ["gb007", "gb011"]
    assert verdicts["nvl72b"].missing == tuple(f"gb{n:03d}" for n in range(22, 37))


def test_the_majority_decides_and_most_nodes_disagreeing_is_the_domain_not_a_node():
    one, two = ("u1", 1), ("u1", 2)
    readings = [Reading(n, keys=frozenset({one})) for n in "ab"]
    readings += [Reading(n, keys=frozenset({two})) for n in "cde"]
    [v] = judge(readings)
    assert v.domain == ALL and v.key == two and [o.node for o in v.odd] == ["a", "b"]
    # the majority's own nodes with their NVLinks down as well: most of the domain disagrees
    down = ("gpu0: NVLink 3 down (17/18 active)",)
    readings[2] = Reading("c", keys=frozenset({two}), problems=down)
    [v] = judge(readings)
    assert v.odd == () and v.whole == "3 of 5 nodes disagree: the domain, not a node"
    # a tie has no majority: no node is singled out
    [v] = judge(readings[:4])
    assert v.key is None and v.whole.startswith("no NVLink domain shared by most of its 4")
    # one odd node among five, in another domain
    readings = [Reading(n, keys=frozenset({one})) for n in "abcd"]
    readings.append(Reading("e", keys=frozenset({("u2", 1)})))
    [v] = judge(readings)
    assert [(o.node, o.why) for o in v.odd] == [("e", f"NVLink domain u2, the rest of {ALL}: u1")]


def test_the_domain_command(rack_runs, tmp_path, capsys):
    runs = tmp_path / "rack.json"
    runs.write_text(rack_runs)
    assert main(["domain", str(runs), "--topology", str(CONF)]) == 1
    out = capsys.readouterr().out
    assert f"nvl72a: 18 node(s), {DOMAIN} clique 4026" in out
    assert "  ODD     gb007: clique 4027, the rest of nvl72a: clique 4026" in out
    assert "  DOMAIN  no NVLink domain shared by most of its 3 nodes" in out
    healthy = [doc for doc in parse_documents(rack_runs) if doc["node"] in ("gb001", "gb002")]
    runs.write_text(json.dumps(healthy))
    assert main(["domain", str(runs), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["odd"] == []
    runs.write_text("{not json")
    assert main(["domain", str(runs)]) == 2
