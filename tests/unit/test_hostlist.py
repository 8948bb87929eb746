"""nodecheck.hostlist: Slurm's own expansion is the truth.

Where Slurm is installed (tools/install-system-deps.sh puts it on every test machine), the
expected names come from `scontrol show hostnames`, which expands locally without a
controller; the literal lists beside them are what Slurm 22.05 printed, for machines
without it.
"""

import shutil
import subprocess

import pytest

from nodecheck import hostlist

SCONTROL = shutil.which("scontrol") or "/usr/bin/scontrol"

# (host list, what Slurm 22.05's `scontrol show hostnames` prints)
SLURM_EXPANSIONS = [
    ("n1", ["n1"]),
    ("n[1-3]", ["n1", "n2", "n3"]),
    ("n[1-2,5],login1", ["n1", "n2", "n5", "login1"]),
    ("gpu[008-010]", ["gpu008", "gpu009", "gpu010"]),
    ("n[08-10]", ["n08", "n09", "n10"]),  # the lower bound's padding sets the width
    ("n[01-3]", ["n01", "n02", "n03"]),
    ("n[1-010]", ["n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9", "n10"]),
    ("node[001-003,010]", ["node001", "node002", "node003", "node010"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
]


def slurm_hostnames(text, tmp_path):
    """Slurm's expansion of `text`, or None where Slurm is not installed."""
    if not shutil.which(SCONTROL):
        return None
    conf = tmp_path / "slurm.conf"  # scontrol wants a config even for local work
    conf.write_text(
        "ClusterName=t\nSlurmctldHost=localhost\nNodeName=n1\nPartitionName=p Nodes=n1\n"
    )
    out = subprocess.run(
        [SCONTROL, "show", "hostnames", text],
        env={"SLURM_CONF": str(conf), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize(("text", "names"), SLURM_EXPANSIONS)
def test_expansion_is_slurms(text, names, tmp_path):
    from_slurm = slurm_hostnames(text, tmp_path)
    if from_slurm is not None:
        assert from_slurm == names  # the table above is what Slurm says
    assert hostlist.expand(text) == names


def test_duplicates_are_kept_once_where_slurm_repeats_them():
    # `scontrol show hostnames n[1-3],n2` prints n2 twice; a peer list needs each node once
    assert hostlist.expand("n[1-3],n2") == ["n1", "n2", "n3"]


def test_a_suffix_after_the_range_is_accepted():
    # Slurm 22.05 refuses this ("Invalid hostlist"); fabric host names use it
    assert hostlist.expand("gpu[01-02]-ib") == ["gpu01-ib", "gpu02-ib"]


@pytest.mark.parametrize("text", ["n[1-", "n]1[", "n[a-b]", "n[5-1]", "n[1-999999]"])
def test_malformed_or_huge_lists_are_refused(text):
    with pytest.raises(ValueError):
        hostlist.expand(text)


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("node[1-128]", "node1", True),
        ("node[1-128]", "node128", True),
        ("node[1-128]", "node001", False),  # Slurm's node[1-128] has no node001
        ("node[001-128]", "node001", True),
        ("node[001-128]", "node1", False),
        ("node[001-128]", "node129", False),
        ("gpu[001-064,100]", "gpu100", True),
        ("gpu[001-064,100]", "gpu065", False),
        ("dgx-*", "dgx-a17", True),
        ("dgx-*", "dgxa17", False),
        ("rack[1-2]-*", "rack2-n7", True),
        ("rack[1-2]-*", "rack3-n7", False),
        ("login1,login2", "login2", True),
    ],
)
def test_node_class_patterns(pattern, name, matches):
    assert hostlist.host_matches(pattern, name) is matches


def test_collect_for_reports():
    assert hostlist.collect(["gpu002", "gpu001", "gpu010", "login1"]) == "gpu[001-002,010],login1"
