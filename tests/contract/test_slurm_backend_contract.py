"""The Slurm backend contract, run against every backend x Slurm version present.

Test ids name the combination: `[scontrol-slurm22.05]` on the Debian 12 host,
`[scontrol-slurm24.11]` / `[scontrol-text-slurm24.11]` in the trixie root (tools/slurm-roots),
`[pyslurm-slurm26.05]` / `[scontrol-slurm26.05]` / `[scontrol-text-slurm26.05]` in the sid root
(tools/pyslurm-sid). `scontrol` reads JSON where the release offers it; `scontrol-text` is the
same backend held to the text form.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nodecheck.core.node import NodeInfo
from nodecheck.core.reason import REASON_PREFIX
from nodecheck.slurm import SlurmError
from nodecheck.slurm.backend import select_backend
from nodecheck.slurm.scontrol import ScontrolBackend

OURS = "nodecheck: gpu.ecc gpu3: 2 uncorrectable ECC errors (volatile DBE) [prolog job 4242]"
ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")


def _admin_drain(cluster, node: str, reason: str) -> None:
    """An admin's drain, straight through scontrol, not through any nodecheck backend."""
    cluster.scontrol("update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}")


def test_list_nodes_sees_all_nodes(backend, cluster) -> None:
    nodes = {n.name: n for n in backend.list_nodes()}
    assert set(nodes) == {"n1", "n2"}
    for info in nodes.values():
        assert isinstance(info, NodeInfo)
        assert "IDLE" in info.states, info
        assert not info.drained
        assert info.reason == ""
        assert info.partitions == (cluster.partition,)


def test_drain_reads_back_exactly(backend, cluster) -> None:
    backend.drain("n1", OURS)

    info = backend.node_info("n1")
    assert info.name == "n1"
    assert info.reason == OURS
    assert "DRAIN" in info.states, info.states
    assert info.drained
    assert info.drained_by_nodecheck
    assert info.reason_user == "root"
    assert ISO_TIME.match(info.reason_time), info.reason_time
    # Slurm itself agrees (sinfo, independent of both backends).
    state, reason = cluster.node_state("n1")
    assert state.rstrip("*") in ("drained", "draining"), state  # "*": not responding yet
    assert reason == OURS
    # The other node is untouched.
    other = backend.node_info("n2")
    assert not other.drained and other.reason == ""


def test_list_nodes_shows_the_drain(backend, cluster) -> None:
    backend.drain("n2", OURS)
    nodes = {n.name: n for n in backend.list_nodes()}
    assert nodes["n2"].drained_by_nodecheck
    assert nodes["n2"].reason == OURS
    assert not nodes["n1"].drained


def test_resume_clears_the_drain(backend, cluster) -> None:
    backend.drain("n1", OURS)
    assert backend.node_info("n1").drained

    backend.resume("n1")

    info = backend.node_info("n1")
    assert not info.drained, info.states
    assert not info.drained_by_nodecheck
    # 22.05 and 26.05 clear the reason; 24.11 keeps the old text on the resumed, idle node
    # (scontrol, JSON and sinfo alike), which is why "ours" always also needs the drain.
    assert info.reason in ("", OURS)
    assert cluster.node_state("n1")[0].rstrip("*") == "idle"


@pytest.mark.parametrize(
    "reason",
    [
        "RMA gpu3, ticket 1234",
        "nodecheck-like text but not our prefix",
        "NODECHECK: upper case is not our prefix",
        "maintenance: nodecheck: prefix not at the start",
    ],
)
def test_admin_drain_is_not_ours(backend, cluster, reason: str) -> None:
    assert not reason.startswith(REASON_PREFIX)
    _admin_drain(cluster, "n2", reason)

    info = backend.node_info("n2")
    assert info.drained
    assert info.reason == reason
    assert not info.drained_by_nodecheck


def test_drained_by_nodecheck_only_with_our_prefix(backend, cluster) -> None:
    backend.drain("n1", OURS)
    _admin_drain(cluster, "n2", "disk replaced, waiting for burn-in")
    nodes = {n.name: n for n in backend.list_nodes()}
    assert nodes["n1"].drained_by_nodecheck
    assert nodes["n2"].drained and not nodes["n2"].drained_by_nodecheck


def test_unknown_node_raises(backend, cluster) -> None:
    with pytest.raises(SlurmError):
        backend.node_info("n99")


def test_drain_unknown_node_raises(backend, cluster) -> None:
    with pytest.raises(SlurmError):
        backend.drain("n99", OURS)
    assert not any(n.drained for n in backend.list_nodes())


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param("""quotes "double" and 'single' inside""", id="quotes-inside"),
        pytest.param("$(touch /tmp/nodecheck-pwned) `touch /tmp/nodecheck-pwned`", id="subst"),
        pytest.param("a; touch /tmp/nodecheck-pwned; b && c || d | e > f", id="shell-ops"),
        pytest.param("key=value Reason=x State=RESUME %s %n \\ back\\slash", id="scontrol-ish"),
        pytest.param('ends with a quote "', id="trailing-quote"),
        pytest.param("unicode: température 92°C", id="unicode"),
    ],
)
def test_reason_round_trips_literally(backend, cluster, tail: str) -> None:
    reason = f"{REASON_PREFIX} gpu.xid gpu0: {tail} [epilog job 7]"
    pwned = Path("/tmp/nodecheck-pwned")
    pwned.unlink(missing_ok=True)

    backend.drain("n1", reason)

    info = backend.node_info("n1")
    assert info.reason == reason
    # A reason nodecheck never writes (it cleans quotes and metacharacters out): the
    # backend must carry it whole all the same; whose it is, core/node.py decides.
    assert info.drained and info.reason.startswith(REASON_PREFIX)
    assert cluster.node_state("n1")[1] == reason
    assert not pwned.exists()


def test_refuses_multi_line_reason_and_odd_node_names(backend, cluster) -> None:
    with pytest.raises(SlurmError):
        backend.drain("n1", "nodecheck: x\nState=RESUME")
    with pytest.raises(SlurmError):
        backend.drain("n1,n2", OURS)
    with pytest.raises(SlurmError):
        backend.node_info("-n1")
    assert not any(n.drained for n in backend.list_nodes())


def test_backend_agrees_with_scontrol(backend, backend_name, cluster, scontrol_path) -> None:
    """Every backend reads exactly what the scontrol backend reads, field for field."""
    if backend_name == "scontrol":
        pytest.skip("scontrol is the reference")
    reference = ScontrolBackend(scontrol_path, str(cluster.conf_path))
    backend.drain("n1", OURS)
    _admin_drain(cluster, "n2", "admin: cable check")
    _agree(backend.list_nodes, reference.list_nodes)
    for node in ("n1", "n2"):
        _agree(
            lambda node=node: backend.node_info(node), lambda node=node: reference.node_info(node)
        )


def _agree(read: Callable[[], object], reference: Callable[[], object]) -> None:
    """`read` returns what `reference` does, compared between two reference reads that
    agree with each other: a node of the test cluster may change state between two reads
    (slurmctld flags a slurmd NOT_RESPONDING on its own schedule), and that is no
    disagreement between the backends."""
    for _ in range(20):
        before, got, after = reference(), read(), reference()
        if before == after:
            assert got == before
            return
        time.sleep(0.2)
    raise AssertionError("the node's state kept changing between reads")


def test_scontrol_reads_json_where_the_release_offers_it(
    cluster, scontrol_path, scontrol_has_json
) -> None:
    """The backend asks `scontrol --help` once (--json came with Slurm 23.02)."""
    backend = ScontrolBackend(scontrol_path, str(cluster.conf_path))
    assert backend.output is None  # nothing asked before the first read
    assert {n.name for n in backend.list_nodes()} == {"n1", "n2"}
    assert backend.output == ("json" if scontrol_has_json else "text")


def test_pyslurm_is_usable_here(contract_cluster, pyslurm_problem, scontrol_path) -> None:
    """One line in the report saying whether pyslurm ran here, and why not."""
    if pyslurm_problem is not None:
        message = f"pyslurm backend not exercised: {pyslurm_problem}"
        if os.environ.get("NODECHECK_REQUIRE_PYSLURM", "") == "1":
            pytest.fail(f"{message} (NODECHECK_REQUIRE_PYSLURM=1)", pytrace=False)
        pytest.skip(message)
    choice = select_backend("auto", scontrol_path, str(contract_cluster.conf_path))
    assert choice.backend.name == "pyslurm", choice.why
    assert "libslurm" in choice.why
    # Loading pyslurm must not leave RTLD_DEEPBIND set for every later extension import.
    assert not os.RTLD_DEEPBIND & sys.getdlopenflags()


def test_breaker_slot_is_held_once_and_given_back(backend, cluster) -> None:
    """The breaker's exactness rests on this: slurmctld lets one node hold a slot, refuses
    it to the next, names the holder, and frees it when given back (slurm/claims.py)."""
    name = "nodecheck_breaker_7"
    try:
        assert backend.claim(name, "n1", 10) is True
        assert backend.claim(name, "n2", 10) is False  # taken: no error, a plain refusal
        [slot] = [c for c in backend.claims() if c.name == name]
        assert slot.nodes == "n1"
        assert ISO_TIME.match(slot.end), slot
        # A license claim reserves no node: both nodes still take jobs.
        assert not any("RESERVED" in backend.node_info(n).states for n in ("n1", "n2"))
    finally:
        backend.release(name)
    assert name not in {c.name for c in backend.claims()}
    assert backend.claim(name, "n2", 1) is True  # free again
    backend.release(name)


def test_partition_size_in_one_small_read(backend, cluster) -> None:
    part = backend.partition(cluster.partition)
    assert part.total == 2
    assert part.nodes == "n[1-2]"
    with pytest.raises(SlurmError):
        backend.partition("no_such_partition")


def _rpcs(cluster) -> dict[str, int]:
    """slurmctld's own count of the RPCs it answered since the last `sdiag -r`, by type."""
    text = cluster.run(["sdiag"]).stdout
    part = text.split("by message type", 1)[1].split("by user", 1)[0]
    found = re.finditer(r"^\s*(\w+)\s+\(\s*\d+\)\s+count:(\d+)", part, re.M)
    return {m.group(1): int(m.group(2)) for m in found}


def test_node_info_reads_one_node_not_the_table(backend, cluster) -> None:
    """What one failing node costs slurmctld must not grow with the cluster: node_info is
    answered with that node's record alone (sdiag counts the RPCs by type)."""
    cluster.run(["sdiag", "-r"])
    assert backend.node_info("n2").name == "n2"
    seen = _rpcs(cluster)
    assert seen.get("REQUEST_NODE_INFO_SINGLE", 0) == 1, seen
    assert "REQUEST_NODE_INFO" not in seen, seen
