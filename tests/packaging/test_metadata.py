"""The packaging files agree with each other (no root, no build): one version, one venv path,
one log path, and slurm.conf.example names paths the package really installs; the maintainer
scripts enable, start, restart and stop the agent's unit."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

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


AGENT_UNIT = "nodecheck-agent.service"
SCRIPTS = ("preinst", "postinst", "prerm", "postrm")


def scripts_from_debhelper(tmp_path: Path) -> dict[str, str]:
    """The maintainer scripts debhelper writes from debian/ (what `make deb` puts in the .deb,
    less dh-virtualenv's part): debian/rules' own dh_installsystemd call, then
    dh_installdeb, in a copy of debian/ (symlinks resolved, as the build sees them)."""
    for tool in ("make", "dh_installsystemd", "dh_installdeb"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (debhelper: make install)")
    shutil.copytree(DEBIAN, tmp_path / "debian", symlinks=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DH_", "DEB_"))}
    for argv in (
        ["make", "-s", "-f", "debian/rules", "override_dh_installsystemd"],
        ["dh_installdeb", "-pnodecheck"],
    ):
        done = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
    built = tmp_path / "debian" / "nodecheck" / "DEBIAN"
    return {name: (built / name).read_text() for name in SCRIPTS if (built / name).exists()}


def scripts_from_deb(deb: str) -> dict[str, str]:
    """The maintainer scripts of a built .deb (`make test-deb` passes it in NODECHECK_DEB)."""
    ctrl = subprocess.run(["dpkg-deb", "--ctrl-tarfile", deb], capture_output=True, check=True)
    scripts = {}
    with tarfile.open(fileobj=io.BytesIO(ctrl.stdout)) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if name in SCRIPTS and member.isfile():
                scripts[name] = tar.extractfile(member).read().decode()
    return scripts


def unit_actions(script: str, unit: str) -> set[tuple[str, str]]:
    """(tool, action) of every deb-systemd-helper / deb-systemd-invoke call on `unit`;
    debhelper's `deb-systemd-invoke $_dh_action` counts once per value it assigns."""
    actions = set()
    call = re.compile(rf"(deb-systemd-helper|deb-systemd-invoke)\s+(?:--\S+\s+)*(\S+)\s+'{unit}'")
    for tool, action in call.findall(script):
        tool = tool.removeprefix("deb-systemd-")
        if action == "$_dh_action":
            actions |= {(tool, a) for a in re.findall(r"_dh_action=(\w+)", script)}
        else:
            actions.add((tool, action))
    return actions


@pytest.fixture(params=["debhelper", "deb"])
def maintainer_scripts(request, tmp_path) -> dict[str, str]:
    if request.param == "deb":
        deb = os.environ.get("NODECHECK_DEB", "")
        if not deb:
            pytest.skip("NODECHECK_DEB not set (make test-deb)")
        return scripts_from_deb(deb)
    return scripts_from_debhelper(tmp_path)


def test_maintainer_scripts_enable_start_restart_and_stop_the_agent(maintainer_scripts):
    """The agent is the standard deployment: installing the package enables and starts it,
    an upgrade restarts it on the new code, removal stops it, purge disables it."""
    act = {name: unit_actions(maintainer_scripts.get(name, ""), AGENT_UNIT) for name in SCRIPTS}
    postinst = maintainer_scripts["postinst"]
    assert {("helper", "enable"), ("invoke", "start"), ("invoke", "restart")} <= act["postinst"]
    # The --no-enable form re-enables only a unit the admin had enabled ("debian-installed").
    assert f"deb-systemd-helper debian-installed '{AGENT_UNIT}'" not in postinst
    # It keeps serving while dpkg unpacks an upgrade (no stop in preinst): postinst restarts it.
    assert ("invoke", "stop") not in act["preinst"]
    assert ("invoke", "stop") in act["prerm"]
    assert ("helper", "purge") in act["postrm"]
