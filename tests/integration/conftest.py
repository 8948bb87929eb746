"""Fixtures for integration tests against a real, throw-away Slurm cluster on loopback.

Every test under tests/integration is marked `integration`. Without root or without the Slurm
and munge binaries the cluster fixtures skip; with NODECHECK_REQUIRE_SLURM=1 (CI) they fail.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

PROLOG = REPO_ROOT / "prolog" / "nodecheck-prolog"
EPILOG = REPO_ROOT / "epilog" / "nodecheck-epilog"
HEALTH = REPO_ROOT / "health" / "nodecheck-health"

SLURM_SBIN = Path(os.environ.get("NODECHECK_SLURM_SBIN", "/usr/sbin"))
SLURM_BIN = Path(os.environ.get("NODECHECK_SLURM_BIN", "/usr/bin"))


# tools/ is not a package; testcluster.py is a stdlib-only script that is also a module.
sys.path.insert(0, str(REPO_ROOT / "tools"))
import testcluster  # noqa: E402

TestCluster = testcluster.TestCluster


def require_slurm() -> bool:
    return os.environ.get("NODECHECK_REQUIRE_SLURM", "") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip, or fail when NODECHECK_REQUIRE_SLURM=1 says the cluster must be there."""
    if require_slurm():
        pytest.fail(f"{reason} (NODECHECK_REQUIRE_SLURM=1, so not skipping)", pytrace=False)
    pytest.skip(reason)


def slurm_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (the test Slurm cluster runs its daemons as root)"
    missing = testcluster.missing_binaries(SLURM_SBIN, SLURM_BIN)
    if missing:
        return (
            f"Slurm/munge binaries missing ({', '.join(missing)}); run tools/install-system-deps.sh"
        )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def slurm_available() -> None:
    reason = slurm_unavailable_reason()
    if reason:
        skip_or_fail(reason)


class _Factory:
    """Starts clusters with their own state dirs; stop_all() stops every one it started."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.started: list[TestCluster] = []

    def __call__(self, **kwargs) -> TestCluster:
        kwargs.setdefault("sbin", SLURM_SBIN)
        kwargs.setdefault("bin", SLURM_BIN)
        state_dir = kwargs.pop("state_dir", None) or self.tmp_path_factory.mktemp("slurm")
        cluster = TestCluster(state_dir=state_dir, **kwargs)
        self.started.append(cluster)
        cluster.start()  # stops what it started itself if it fails
        return cluster

    def stop_all(self) -> None:
        errors = []
        for cluster in reversed(self.started):
            try:
                cluster.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        self.started.clear()
        if errors:
            raise errors[0]


@pytest.fixture
def make_slurm_cluster(
    slurm_available: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., TestCluster]]:
    """Factory for a test's own cluster: `make_slurm_cluster(nodes=4, prolog=..., ...)` takes
    TestCluster's keyword arguments, gives each cluster a fresh state dir and stops all of
    them when the test ends, pass or fail."""
    factory = _Factory(tmp_path_factory)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def nodecheck_config_text() -> str | None:
    """nodecheck.toml content for the session cluster (written next to its slurm.conf).
    None: write nothing (nodecheck's defaults). Override this fixture to change it."""
    return None


@pytest.fixture(scope="session")
def slurm_cluster(
    slurm_available: None,
    tmp_path_factory: pytest.TempPathFactory,
    nodecheck_config_text: str | None,
) -> Iterator[TestCluster]:
    """A 2-node cluster (n1, n2) running the project's real Prolog/Epilog/HealthCheckProgram.

    HealthCheckInterval is 0: slurmd never runs the health program by itself, so it cannot
    drain nodes behind other tests' backs; run `cluster.health_wrapper` by hand (with
    `env -i SLURMD_NODENAME=n1`) to exercise it. Tests that drain nodes should use
    `clean_slurm_cluster` or call `cluster.reset()` themselves.
    """
    missing = [str(p) for p in (PROLOG, EPILOG, HEALTH) if not os.access(p, os.X_OK)]
    if missing:
        skip_or_fail(f"nodecheck entrypoints missing or not executable: {', '.join(missing)}")
    factory = _Factory(tmp_path_factory)
    try:
        yield factory(
            nodes=2,
            prolog=PROLOG,
            epilog=EPILOG,
            health_program=HEALTH,
            health_interval=0,
            nodecheck_config_text=nodecheck_config_text,
        )
    finally:
        factory.stop_all()


@pytest.fixture
def clean_slurm_cluster(slurm_cluster: TestCluster) -> TestCluster:
    """The session cluster, reset first: no jobs, every node IDLE (drains resumed)."""
    slurm_cluster.reset()
    return slurm_cluster


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A test's scratch dir that slurmd's hooks (root, another cwd) can read: config, logs,
    state, fake sysfs trees."""
    tmp_path.chmod(0o755)
    return tmp_path
