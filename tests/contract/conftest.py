"""Fixtures for the Slurm backend contract: every backend present x the Slurm found here.

Standard library + pytest only, and nothing from nodecheck beyond nodecheck.slurm: the same
files run on the host (Debian 12, Slurm 22.05) in `make test` and inside the Debian sid root
(Slurm 26.05, pyslurm) from tools/pyslurm-sid/run-tests.sh.

Environment:
  NODECHECK_SLURM_SBIN / NODECHECK_SLURM_BIN   where slurmctld/slurmd/munged and the clients are
  NODECHECK_REQUIRE_SLURM=1     fail instead of skip when no cluster can be started (CI)
  NODECHECK_REQUIRE_PYSLURM=1   fail instead of skip when pyslurm is unusable (sid root)
  NODECHECK_CONTRACT_STATE_DIR  fixed state dir for the cluster, so a wrapper script can stop
                                it by its recorded PIDs whatever happens to pytest
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

SLURM_SBIN = Path(os.environ.get("NODECHECK_SLURM_SBIN", "/usr/sbin"))
SLURM_BIN = Path(os.environ.get("NODECHECK_SLURM_BIN", "/usr/bin"))
SCONTROL = SLURM_BIN / "scontrol"


# tools/ is not a package; testcluster.py is a stdlib-only script that is also a module.
sys.path.insert(0, str(REPO_ROOT / "tools"))
import testcluster  # noqa: E402

TestCluster = testcluster.TestCluster


def slurm_series() -> str:
    """Slurm major.minor running here, e.g. "22.05": `slurmctld -V` (needs no slurm.conf,
    unlike 22.05's `scontrol --version`), else `scontrol --version`, else "?"."""
    try:
        major, minor, _ = testcluster.slurm_version(SLURM_SBIN)
        return f"{major}.{minor:02d}"
    except Exception:
        pass
    try:
        out = subprocess.run(
            [str(SCONTROL), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return "?"
    match = re.search(r"(\d+)\.(\d+)\.\d+", out)
    return f"{match[1]}.{match[2]}" if match else "?"


def pyslurm_problem() -> str | None:
    from nodecheck.slurm.pyslurm_backend import pyslurm_unusable_reason

    return pyslurm_unusable_reason()


SLURM_SERIES = slurm_series()
PYSLURM_PROBLEM = pyslurm_problem()
# `scontrol --json` came with Slurm 23.02 (22.05 has none, 24.11 and 26.05 have it). The
# scontrol backend finds out for itself (from `scontrol --help`); the contract checks that it
# finds what the release really offers.
SCONTROL_HAS_JSON = SLURM_SERIES != "?" and tuple(map(int, SLURM_SERIES.split("."))) >= (23, 2)
# The backends this machine can exercise: scontrol always (reading JSON where it offers it),
# scontrol forced to its text form where JSON is the default (the text parser must still
# read that release), pyslurm when it is usable here.
BACKENDS = (
    ["scontrol"]
    + (["scontrol-text"] if SCONTROL_HAS_JSON else [])
    + (["pyslurm"] if PYSLURM_PROBLEM is None else [])
)


def _flag(name: str) -> bool:
    return os.environ.get(name, "") == "1"


def skip_or_fail(reason: str, require_var: str = "NODECHECK_REQUIRE_SLURM") -> None:
    if _flag(require_var):
        pytest.fail(f"{reason} ({require_var}=1, so not skipping)", pytrace=False)
    pytest.skip(reason)


def slurm_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "contract tests need root (the test Slurm cluster runs its daemons as root)"
    missing = testcluster.missing_binaries(SLURM_SBIN, SLURM_BIN)
    if missing:
        return f"Slurm/munge binaries missing: {', '.join(missing)}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_name" in metafunc.fixturenames:
        metafunc.parametrize(
            "backend_name", BACKENDS, ids=[f"{b}-slurm{SLURM_SERIES}" for b in BACKENDS]
        )


@pytest.fixture(scope="session")
def contract_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """A plain 2-node cluster (n1, n2; no Prolog/Epilog), shared by every contract test."""
    reason = slurm_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    fixed = os.environ.get("NODECHECK_CONTRACT_STATE_DIR")
    state_dir = Path(fixed) if fixed else tmp_path_factory.mktemp("contract-slurm")
    cluster = TestCluster(state_dir=state_dir, nodes=2, sbin=SLURM_SBIN, bin=SLURM_BIN)
    try:
        cluster.start()  # stops what it started itself if it fails
    except testcluster.ClusterError as exc:
        # One retry: TestCluster._alive() can misread a daemon that has just exec'd as dead
        # (its /proc/PID/cmdline reads empty for a moment), seen about once in 15 starts in
        # the sid root. Anything else fails the same way twice.
        warnings.warn(f"contract cluster start failed, retrying once: {exc}", stacklevel=1)
        cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _base_state(sinfo_state: str) -> str:
    """sinfo's %T without its suffix flags: "idle*" (not responding) -> "idle"."""
    return sinfo_state.rstrip("*~#!%$@^-")


@pytest.fixture
def cluster(contract_cluster: TestCluster) -> TestCluster:
    """The session cluster with every node back to IDLE and no reason left.

    Not TestCluster.reset(): that ends with `scontrol reconfigure`, and from Slurm 23.11 a
    reconfigure makes each slurmd re-exec itself under a new PID, which the cluster then takes
    for a dead daemon. The contract needs no schedulable node, so RESUME is enough (a resumed
    node may read idle* until its next ping).
    """
    states = contract_cluster.node_states()
    for name, state in states.items():
        if _base_state(state) != "idle":
            contract_cluster.scontrol("update", f"NodeName={name}", "State=RESUME", check=False)
    contract_cluster.wait_for(
        lambda: (
            (s := contract_cluster.node_states())
            and len(s) == contract_cluster.nodes
            and all(_base_state(v) == "idle" for v in s.values())
        ),
        timeout=30,
        message="all nodes idle again",
    )
    return contract_cluster


@pytest.fixture(scope="session")
def scontrol_path() -> str:
    return str(SCONTROL)


@pytest.fixture(scope="session")
def slurm_release() -> str:
    """The Slurm major.minor running here, e.g. "24.11"."""
    return SLURM_SERIES


@pytest.fixture(scope="session")
def scontrol_has_json() -> bool:
    """Whether this release's scontrol offers --json (>= 23.02)."""
    return SCONTROL_HAS_JSON


@pytest.fixture(scope="session")
def pyslurm_problem() -> str | None:
    """Why pyslurm is not exercised here, or None when it is."""
    return PYSLURM_PROBLEM


@pytest.fixture
def backend(backend_name: str, cluster: TestCluster):
    from nodecheck.slurm.backend import select_backend
    from nodecheck.slurm.scontrol import ScontrolBackend

    if backend_name == "scontrol-text":
        return ScontrolBackend(str(SCONTROL), str(cluster.conf_path), output="text")
    choice = select_backend(
        preference=backend_name, scontrol_path=str(SCONTROL), slurm_conf=str(cluster.conf_path)
    )
    assert choice.backend.name == backend_name, choice.why
    return choice.backend
