"""Issue 25, item 3: deep.p2p judges each pair against that pair's own link.

A GPU's datasheet NVLink figure is its total over all its links. Bridged PCIe parts have
NVLink only between bridged pairs, and a 4-way bridge splits the links over three peers, so
judging every pair against the total fails healthy nodes. The link per pair comes from
`nvidia-smi topo -m` (real published matrices, tests/fixtures/real/deep/README.md), faked at
the binary. What the copies deliver is the hardware boundary: `p2p.measure_pair` returns the
figures a node of that topology measures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deep.test_checks import ctx_for, run
from deep.test_tools import REAL, fake_tool
from nodecheck.checks.deep.expected import lookup
from nodecheck.checks.deep.p2p import deep_p2p
from nodecheck.core.results import Status
from nodecheck.probes.active import device, p2p

pytest.importorskip("torch")


def nvidia_smi(tmp_path: Path, fixture: str) -> str:
    return fake_tool(
        tmp_path,
        "import sys\nassert sys.argv[1:] == ['topo', '-m'], sys.argv\n"
        f"sys.stdout.write(open({str(REAL / fixture)!r}).read())",
        name="nvidia-smi",
    )


@pytest.fixture
def node(monkeypatch):
    """GPUs of `model` (NVML numbers 0..n-1) whose pair copies measure `bidir[(i, j)]`."""

    def install(model: str, bidir: dict[tuple[int, int], float]) -> None:
        count = 1 + max(j for _, j in bidir)
        found = [device.Device("cpu", i, model, number=i) for i in range(count)]
        monkeypatch.setattr(device, "find_devices", lambda _t, _w="auto": list(found))

        def measured(_torch, first, second, _nbytes, _repeats):
            gbps = bidir[(first.number, second.number)]
            return p2p.PairFigure(first, second, gbps / 2, gbps, True)

        monkeypatch.setattr(p2p, "measure_pair", measured)

    return install


def statuses(results):
    return {r.component.replace("cpu", "gpu"): r.status for r in results}


# Two H100 NVL pairs, each joined by a 12-link bridge; the pairs reach each other only over
# PCIe across sockets (SYS). Bridged pairs: ~87% of 600 GB/s; SYS pairs ~40 GB/s.
BRIDGED = {(0, 1): 522.0, (2, 3): 518.0, (0, 2): 41.0, (0, 3): 39.5, (1, 2): 40.2, (1, 3): 40.8}


def test_a_healthy_bridged_node_passes_every_pair(tmp_path, node):
    node("NVIDIA H100 NVL", BRIDGED)
    ctx = ctx_for(
        "deep.p2p", nvidia_smi=nvidia_smi(tmp_path, "nvidia-smi-topo-4gpu-nv12-bridged-pairs.txt")
    )
    results = run(deep_p2p, ctx)
    assert set(statuses(results).values()) == {Status.PASS}, [r.message for r in results]
    bridged = next(r for r in results if r.values["path"] == "NV12")
    assert bridged.values["expected"] == 600 and "12 NVLinks" in bridged.message


def test_a_degraded_bridge_fails_only_its_pair(tmp_path, node):
    node("NVIDIA H100 NVL", {**BRIDGED, (2, 3): 210.0})
    ctx = ctx_for(
        "deep.p2p", nvidia_smi=nvidia_smi(tmp_path, "nvidia-smi-topo-4gpu-nv12-bridged-pairs.txt")
    )
    failed = [r.component for r in run(deep_p2p, ctx) if r.status is Status.FAIL]
    assert failed == ["cpu2-cpu3"]


def test_an_nvswitch_node_judges_every_pair_against_all_18_links(tmp_path, node):
    pairs = {(i, j): 780.0 for i in range(8) for j in range(i + 1, 8)}
    pairs[(3, 5)] = 300.0  # one NVSwitch port or link gone bad
    node("NVIDIA H100 80GB HBM3", pairs)
    ctx = ctx_for("deep.p2p", nvidia_smi=nvidia_smi(tmp_path, "nvidia-smi-topo-hgx-h100-nv18.txt"))
    results = run(deep_p2p, ctx)
    assert [r.component for r in results if r.status is Status.FAIL] == ["cpu3-cpu5"]
    assert {r.values["expected"] for r in results} == {900}


def test_pcie_only_pairs_through_the_cpu_are_compared_with_each_other():
    """PHB/NODE/SYS paths are the CPU's: no datasheet figure, the node's median."""
    from nodecheck.probes.active import topology

    links = topology.parse_matrix((REAL / "nvidia-smi-topo-8gpu-pcie-only.txt").read_text())
    assert links[(1, 2)].path == "PHB" and links[(0, 6)].path == "SYS"
    assert {link.kind for link in links.values()} == {"pcie"} and len(links) == 28


@pytest.mark.parametrize(
    ("model", "cell", "peer", "expected", "fraction"),
    [
        ("NVIDIA H100 80GB HBM3", "NV18", True, 900, 0.6),  # HGX: all links to every peer
        ("NVIDIA H100 NVL", "NV12", True, 600, 0.6),  # 2-way bridge
        ("NVIDIA H200 NVL", "NV18", True, 900, 0.6),  # H200 NVL 2-way bridge
        ("NVIDIA H200 NVL", "NV6", True, 300, 0.6),  # 4-way bridge: 18 links over 3 peers
        ("NVIDIA A100-SXM4-80GB", "NV12", True, 600, 0.6),
        ("NVIDIA B200", "NV18", True, 1800, 0.6),  # NVLink 5: 100 GB/s per link
        ("NVIDIA H100 PCIe", "PXB", True, 128, 0.5),  # PCIe switch, gen5 x16 both ways
        ("NVIDIA H100 PCIe", "SYS", True, None, 0.0),  # through the CPU: the node's median
        ("NVIDIA H100 PCIe", "PIX", False, None, 0.0),  # staged through the host
    ],
)
def test_each_link_kind_has_its_reference(model, cell, peer, expected, fraction):
    from nodecheck.checks.deep.p2p import pair_reference
    from nodecheck.probes.active import topology

    [link] = topology.parse_matrix(f"\tGPU0\tGPU1\nGPU0\t X \t{cell}\nGPU1\t{cell}\t X \n").values()
    opts = {"min_fraction": 0.6, "pcie_min_fraction": 0.5, "expected": 0.0}
    ref = pair_reference(link, peer, lookup(model), opts)
    assert (ref.expected, ref.fraction) == (expected, fraction)


def test_the_matrix_survives_the_ansi_underlined_header_newer_drivers_print():
    from nodecheck.probes.active import topology

    text = (
        "\t\x1b[4mGPU0\tGPU1\tCPU Affinity\x1b[0m\nGPU0\t X \tNV18\t0-63\nGPU1\tNV18\t X \t0-63\n"
    )
    assert topology.parse_matrix(text) == {(0, 1): topology.Link("nvlink", "NV18", 18)}
