import os

import pytest

from nodecheck.checks.registry import all_checks
from nodecheck.run.config import load_config, parse_config
from nodecheck.run.config_file import ConfigError, find_config_path

REGISTRY = all_checks()


def write(tmp_path, text, mode=0o644):
    path = tmp_path / "nodecheck.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def load(tmp_path, text, mode=0o644):
    return load_config(str(write(tmp_path, text, mode)), {}, REGISTRY)


def test_defaults_without_any_file(tmp_path):
    config = load_config(None, {"SLURM_CONF": str(tmp_path / "slurm.conf")}, REGISTRY)
    assert config.path is None
    assert config.on_internal_error == "pass"
    node = config.for_node("n1", REGISTRY)
    assert node.node_class == "default"
    assert node.checks["host.procs"].phases == frozenset({"epilog"})


def test_config_beside_slurm_conf_is_found(tmp_path):
    path = write(tmp_path, "budget_s = 7\n")
    found, required = find_config_path(None, {"SLURM_CONF": str(tmp_path / "slurm.conf")})
    assert (found, required) == (path, True)
    env_first, _ = find_config_path(
        None, {"NODECHECK_CONFIG": "/x.toml", "SLURM_CONF": str(tmp_path / "slurm.conf")}
    )
    assert str(env_first) == "/x.toml"


def test_node_class_matching_and_overrides(tmp_path):
    config = load(
        tmp_path,
        """
budget_s = 15
[checks."host.mounts"]
required = ["/home"]
timeout_s = 4
[[node_class]]
name = "h100"
match = ["gpu[001-064]", "dgx-*"]
budget_s = 9
sysfs_root = "/fake/sys"
[node_class.checks."host.mounts"]
required = ["/home", "/scratch"]
[node_class.checks."host.mem"]
enabled = false
""",
    )
    gpu = config.for_node("gpu007", REGISTRY)
    assert gpu.node_class == "h100"
    assert gpu.budget_s == 9
    assert str(gpu.settings.sysfs_root) == "/fake/sys"
    assert gpu.checks["host.mounts"].options["required"] == ["/home", "/scratch"]
    assert gpu.checks["host.mounts"].timeout_s == 4  # inherited from the global table
    assert gpu.checks["host.mem"].enabled is False
    other = config.for_node("login1", REGISTRY)
    assert other.node_class == "default"
    assert other.budget_s == 15
    assert other.checks["host.mounts"].options["required"] == ["/home"]
    assert other.checks["host.mem"].enabled is True
    assert config.for_node("gpu065", REGISTRY).node_class == "default"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("budget_s = 'ten'", "budget_s: expected int or float, got str"),
        ("bugdet_s = 10", "unknown setting 'bugdet_s'"),
        ("on_internal_error = 'explode'", "on_internal_error must be one of"),
        ('[checks."host.mounts"]\nrequried = []', "unknown option 'requried'"),
        ("[checks.\"host.mounts\"]\nrequired = '/home'", "required: expected list"),
        ('[checks."host.mounts"]\nrequired = [1]', "required[0]: expected str"),
        ('[checks."host.mem"]\nmin_total_gib = true', "expected int or float, got bool"),
        ('[checks."gpu.nosuch"]\nenabled = true', "unknown check"),
        ('[checks."host.mem"]\ntimeout_s = 0', "timeout_s must be in"),
        ("[checks.\"host.mem\"]\nphases = ['boot']", "phases must be a list"),
        ("[[node_class]]\nmatch = ['n1']", "needs a non-empty string 'name'"),
        ("[[node_class]]\nname = 'x'\nmatch = ['n[1-']", "match"),
        ("[[node_class]]\nname = 'x'\nmatch = ['n1']\nlog_file = '/x'", "unknown setting"),
        ("nvml = 'fake'", "nvml must be"),
        ("this is not toml", "not valid TOML"),
        ('[checks."host.mem"]\nphases = [{}]', "phases must be a list"),
        ("[checks.\"host.mem\"]\nphases = [['prolog']]", "phases must be a list"),
        ("breaker_floor = -1", "breaker_floor must be in [0, 100000]"),
        ("breaker_max_drains = -5", "breaker_max_drains must be in [0, 100000]"),
        ("breaker_window_min = 0", "breaker_window_min must be in (0, 10080]"),
        ("breaker_max_share = 1.5", "breaker_max_share must be in [0, 1]"),
        ("probe_memory_mb = -1", "probe_memory_mb must be in [0, 1048576]"),
        ("probe_memory_mb = 16", "probe_memory_mb must be 0 (no limit) or at least 128"),
        ('[checks."gpu.compute_mode"]\nexpected = "exclusive"', "expected: must be one of"),
        (
            '[checks."gpu.persistence"]\nseverity = "loud"',
            "severity: must be one of ['fail', 'warn']",
        ),
        ('[checks."ib.port"]\nlink_layer = "IB"', "link_layer: must be one of"),
        ('[checks."ib.counters"]\nfail_rise = {symbol_error = -1}', "symbol_error: must be in"),
        ('[checks."ib.counters"]\nmax_window_s = 0', "max_window_s: must be in [1,"),
    ],
)
def test_broken_config_is_a_clear_error(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert fragment in str(err.value)
    assert str(tmp_path) in str(err.value)  # names the file


def test_missing_named_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.toml"), {}, REGISTRY)


def test_config_writable_by_others_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="writable by group or others"):
        load(tmp_path, "budget_s = 5", mode=0o666)


def test_parse_config_accepts_int_for_float():
    config = parse_config({"budget_s": 5}, None, REGISTRY)
    assert config.for_node("n1", REGISTRY).budget_s == 5.0


def test_shipped_example_config_is_valid():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "nodecheck.toml"
    config = load_config(str(example), {}, REGISTRY)
    assert config.for_node("gpu007", REGISTRY).node_class == "h100"
    assert config.for_node("login2", REGISTRY).node_class == "login"


def test_compute_mode_choices_are_nvmls_names():
    from nodecheck.probes.nvml.model import COMPUTE_MODES

    option = REGISTRY["gpu.compute_mode"].options["expected"]
    assert set(option.choices) == set(COMPUTE_MODES.values())
