"""The packaging files agree with each other (no root, no build): one version, one venv path,
one log path, and slurm.conf.example names paths the package really installs."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "debian"


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def deb_links() -> dict[str, str]:
    """debian/nodecheck.links: link path -> target, both absolute."""
    links = {}
    for line in (DEBIAN / "nodecheck.links").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            target, link = line.split()
            links["/" + link] = "/" + target
    return links


def venv_dir() -> str:
    """Where dh-virtualenv puts the venv: DH_VIRTUALENV_INSTALL_ROOT + --install-suffix."""
    rules = (DEBIAN / "rules").read_text()
    root = re.search(r"^export DH_VIRTUALENV_INSTALL_ROOT\s*=\s*(\S+)", rules, re.M)
    suffix = re.search(r"--install-suffix\s+(\S+)", rules)
    assert root and suffix, "debian/rules lost its venv location"
    return f"{root.group(1)}/{suffix.group(1)}"


def test_debian_changelog_carries_the_pyproject_version():
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    match = re.match(r"nodecheck \(([^)]+)\)", first)
    assert match, first
    assert match.group(1) == pyproject()["project"]["version"]


def test_wheel_ships_every_entrypoint_and_data_file_that_exists():
    setuptools = pyproject()["tool"]["setuptools"]
    scripts = setuptools["script-files"]
    assert sorted(Path(s).name for s in scripts) == [
        "nodecheck-epilog",
        "nodecheck-health",
        "nodecheck-prolog",
    ]
    data = [f for files in setuptools["data-files"].values() for f in files]
    for path in [*scripts, *data]:
        assert (REPO / path).is_file(), path


def test_fixed_entrypoints_point_into_the_packaged_venv():
    links = deb_links()
    venv_bin = venv_dir() + "/bin"
    for hook in ("prolog", "epilog", "health"):
        assert links[f"/usr/lib/nodecheck/{hook}"] == f"{venv_bin}/nodecheck-{hook}"
    assert links["/usr/sbin/nodecheck"] == f"{venv_bin}/nodecheck"


def test_agent_unit_starts_the_packaged_venv_python():
    unit = (REPO / "examples" / "nodecheck-agent.service").read_text()
    exec_start = re.search(r"^ExecStart=(\S+)", unit, re.M)
    assert exec_start
    assert exec_start.group(1) == venv_dir() + "/bin/python3"


def test_logrotate_snippet_covers_the_example_log_file():
    log_file = tomllib.loads((REPO / "examples" / "nodecheck.toml").read_text())["log_file"]
    snippet = (REPO / "examples" / "nodecheck.logrotate").read_text()
    patterns = re.findall(r"^(/\S+)\s*\{", snippet, re.M)
    assert patterns and any(fnmatch(log_file, pattern) for pattern in patterns), patterns


def test_slurm_conf_example_names_the_package_paths():
    settings = {}
    for line in (REPO / "slurm.conf.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key not in settings, f"{key} given twice: the later line would win"
            settings[key] = value
    links = deb_links()
    for key in ("Prolog", "Epilog", "HealthCheckProgram"):
        assert settings[key] in links, (key, settings[key])
    # It must not replace a site's own scheduler settings.
    assert "SchedulerParameters" not in settings
