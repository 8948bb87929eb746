"""The settings table (run/config_schema.py): consistent with itself, and the one source of
defaults, node-class overridables, types and messages."""

import pytest

from nodecheck.checks.registry import all_checks
from nodecheck.quarantine.ladder import DEFAULT_LADDER
from nodecheck.run.config import parse_config, salvage_config
from nodecheck.run.config_file import ConfigError, ConfigRead
from nodecheck.run.config_schema import (
    BY_NAME,
    CLASS_OVERRIDABLE,
    LADDER_STEPS,
    SETTINGS,
    Either,
    Holds,
    Hostlist,
    OneOf,
    Range,
    defaults,
    parse_settings,
    require_type,
)

REGISTRY = all_checks()


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_default_passes_its_own_type_and_rules(setting):
    require_type(setting.name, setting.default, setting.kinds)
    assert all(rule.problem(setting.default) is None for rule in setting.rules)
    assert setting.why and "\n" not in setting.why


def test_names_are_unique_and_defaults_come_from_the_table():
    assert len(BY_NAME) == len(SETTINGS)
    config = parse_config({}, None, REGISTRY)
    assert dict(config.values) == defaults() == {s.name: s.default for s in SETTINGS}


def test_node_class_overridables_are_the_tables_per_class_rows():
    assert sorted(CLASS_OVERRIDABLE) == [
        "budget_s",
        "disabled",
        "dry_run",
        "nvml",
        "procfs_root",
        "sysfs_root",
    ]
    raw = {"node_class": [{"name": "c", "match": "n1", "state_dir": "/x"}]}
    with pytest.raises(ConfigError, match=r"node_class 'c': unknown setting 'state_dir'$"):
        parse_config(raw, None, REGISTRY)


def test_the_ladder_is_declared_once():
    assert DEFAULT_LADDER == LADDER_STEPS
    assert BY_NAME["escalation"].default == list(LADDER_STEPS)


@pytest.mark.parametrize(
    ("rule", "value", "problem"),
    [
        (Range(0, 10), -1, " must be in [0, 10]"),
        (Range(0, 10), 0, None),
        (Range(0, 10, True, " (x)"), 0, " must be in (0, 10] (x)"),
        (Range(0, 10, True), 10.5, " must be in (0, 10]"),
        (OneOf(("a", "b", "c")), "d", " must be one of ('a', 'b', 'c')"),
        (Either("a", "b"), "c", " must be 'a' or 'b'"),
        (Either("a", "b"), "b", None),
        (Holds(bool, "must be set"), "", " must be set"),
        (Holds(bool, "must all be set", each=True), ["x", ""], " must all be set"),
        (Holds(bool, "must all be set", each=True), [], None),
        (Hostlist(), "", None),
        (Hostlist(), "n[1-2]", None),
    ],
)
def test_rule_messages(rule, value, problem):
    assert rule.problem(value) == problem


def test_hostlist_rule_gives_the_parsers_reason():
    problem = Hostlist().problem("n[1-")
    assert problem is not None and problem.startswith(": ") and len(problem) > 2


def test_type_errors_come_first_then_the_rules_in_table_order():
    # One message per file: a wrong type anywhere before any value out of range.
    with pytest.raises(ConfigError, match=r"^f: nvml: expected str, got int 1$"):
        parse_settings({"budget_s": 0, "nvml": 1}, "f", BY_NAME, ())
    with pytest.raises(ConfigError, match=r"^f: budget_s must be in \(0, 3600\]$"):
        parse_settings({"alert_url": "ftp://x", "budget_s": 0}, "f", BY_NAME, ())


def test_a_lone_log_target_is_a_list_of_one():
    assert parse_settings({"log_target": "syslog"}, "f", BY_NAME, ()) == {"log_target": ["syslog"]}


def test_salvage_keeps_each_valid_setting_and_drops_the_bad_ones(tmp_path):
    read = ConfigRead(
        tmp_path / "n.toml",
        True,
        {"on_internal_error": "drain", "budget_s": 0, "scontrol": "/opt/scontrol", "x": 1},
    )
    config = salvage_config(None, {}, read)
    assert config.on_internal_error == "drain"
    assert config.scontrol == "/opt/scontrol"
    assert config.budget_s == BY_NAME["budget_s"].default
