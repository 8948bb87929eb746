"""Load, validate and resolve the TOML configuration for one node.

Search order for the file: `--config`, `$NODECHECK_CONFIG`, `nodecheck.toml` beside
`$SLURM_CONF` (slurmd passes SLURM_CONF to Prolog/Epilog), `/etc/nodecheck/nodecheck.toml`.
An explicitly named file that is missing is an error; with no file at all, built-in
defaults apply. Every error is a ConfigError naming the key at fault.

The file is found and read by run/config_file.py; the top-level settings' schema is the
table in run/config_schema.py, the per-check tables' in run/config_checks.py. This module
holds what the rest of nodecheck uses: Config and the NodeConfig it resolves for one node
(node class applied), load/parse, salvage and with_overrides.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nodecheck.checks.context import NodeSettings
from nodecheck.checks.registry import Check
from nodecheck.hostlist import host_matches, validate_pattern
from nodecheck.run.config_checks import (
    Hysteresis,
    parse_check_tables,
    parse_hysteresis,
    report_only_setting,
)
from nodecheck.run.config_file import ConfigError, ConfigRead, read_config
from nodecheck.run.config_schema import BY_NAME, CLASS_OVERRIDABLE, defaults, parse_settings


@dataclass(frozen=True)
class CheckSettings:
    """One check's effective settings on one node."""

    enabled: bool
    timeout_s: float
    phases: frozenset[str]
    options: Mapping[str, Any]
    # The site's `report_only`: True (every FAIL only reported), False (the site enabled the
    # check's new signals too), the new signals still only reported, or None (not set: the
    # check's declared new signals are reported, the rest drains). run/report_only.py.
    report_only: bool | tuple[str, ...] | None = None


@dataclass(frozen=True)
class NodeClass:
    """A [[node_class]] table: host patterns and what it overrides."""

    name: str
    patterns: tuple[str, ...]
    overrides: Mapping[str, Any]
    checks: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class NodeConfig:
    """The configuration as it applies to one node, node class applied."""

    node: str
    node_class: str
    budget_s: float
    dry_run: bool
    disabled: bool
    settings: NodeSettings
    checks: Mapping[str, CheckSettings]


@dataclass(frozen=True)
class Config:
    """The validated config file: top-level values, check tables, node classes."""

    path: Path | None
    values: Mapping[str, Any]
    checks: Mapping[str, Mapping[str, Any]]
    node_classes: tuple[NodeClass, ...] = field(default_factory=tuple)
    hysteresis: Mapping[str, Hysteresis] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "values":  # pickle asks before values is set
            raise AttributeError(name)
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def state_dir_for(self, node: str) -> Path:
        # "{node}" lets several slurmd on one host (multiple-slurmd setups, the test
        # cluster) keep separate state.
        return Path(self.values["state_dir"].replace("{node}", node))

    def metrics_file_for(self, node: str) -> Path | None:
        path = self.values["metrics_file"]
        return Path(path.replace("{node}", node)) if path else None

    def for_node(self, node: str, registry: Mapping[str, Check]) -> NodeConfig:
        node_class = next(
            (nc for nc in self.node_classes if any(host_matches(p, node) for p in nc.patterns)),
            None,
        )
        values = dict(self.values)
        class_checks: Mapping[str, Mapping[str, Any]] = {}
        if node_class is not None:
            values.update(node_class.overrides)
            class_checks = node_class.checks
        settings = NodeSettings(
            sysfs_root=Path(values["sysfs_root"]),
            procfs_root=Path(values["procfs_root"]),
            nvml=values["nvml"],
            state_dir=self.state_dir_for(node),
        )
        resolved = {}
        for cid, chk in registry.items():
            merged = {**self.checks.get(cid, {}), **class_checks.get(cid, {})}
            resolved[cid] = CheckSettings(
                enabled=merged.get("enabled", chk.enabled_by_default),
                timeout_s=float(merged.get("timeout_s", chk.timeout_s)),
                phases=frozenset(merged.get("phases", chk.phases)),
                options={name: merged.get(name, opt.default) for name, opt in chk.options.items()},
                report_only=report_only_setting(merged.get("report_only")),
            )
        return NodeConfig(
            node=node,
            node_class=node_class.name if node_class else "default",
            budget_s=float(values["budget_s"]),
            dry_run=values["dry_run"],
            disabled=values["disabled"],
            settings=settings,
            checks=resolved,
        )


def load_config(
    explicit: str | None,
    env: Mapping[str, str],
    registry: Mapping[str, Check],
    read: ConfigRead | None = None,
) -> Config:
    """The validated config; `read` is the file as the hook's first look read it."""
    read = read or read_config(explicit, env)
    if read.error:
        raise ConfigError(read.error)
    if read.data is None:
        if read.required:
            raise ConfigError(f"{read.path}: config file not found")
        return parse_config({}, None, registry)
    return parse_config(read.data, read.path, registry)


def parse_config(
    data: Mapping[str, Any], path: Path | None, registry: Mapping[str, Check]
) -> Config:
    where = str(path) if path else "<defaults>"
    values = defaults()
    values.update(
        parse_settings(data, where, allowed=BY_NAME, extra=("checks", "node_class", "hysteresis"))
    )
    checks = parse_check_tables(data.get("checks", {}), f"{where}: checks", registry)
    raw_classes = data.get("node_class", [])
    if not isinstance(raw_classes, list):
        raise ConfigError(f"{where}: node_class must be an array of tables ([[node_class]])")
    classes = tuple(
        _parse_node_class(raw, f"{where}: node_class[{i}]", registry)
        for i, raw in enumerate(raw_classes)
    )
    hysteresis = parse_hysteresis(data.get("hysteresis", {}), f"{where}: hysteresis", registry)
    return Config(
        path=path, values=values, checks=checks, node_classes=classes, hysteresis=hysteresis
    )


def _parse_node_class(raw: Any, where: str, registry: Mapping[str, Check]) -> NodeClass:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: needs a non-empty string 'name'")
    where = f"{where.rsplit(':', 1)[0]}: node_class {name!r}"
    patterns = raw.get("match")
    if isinstance(patterns, str):
        patterns = [patterns]
    if (
        not isinstance(patterns, list)
        or not patterns
        or not all(isinstance(p, str) for p in patterns)
    ):
        raise ConfigError(f"{where}: 'match' must be a host pattern or a list of them")
    for pattern in patterns:
        try:
            validate_pattern(pattern)
        except ValueError as exc:
            raise ConfigError(f"{where}: match: {exc}") from None
    body = {k: v for k, v in raw.items() if k not in ("name", "match")}
    overrides = parse_settings(body, where, allowed=CLASS_OVERRIDABLE, extra=("checks",))
    checks = parse_check_tables(body.get("checks", {}), f"{where}: checks", registry)
    return NodeClass(name=name, patterns=tuple(patterns), overrides=overrides, checks=checks)


def salvage_config(
    explicit: str | None, env: Mapping[str, str], read: ConfigRead | None = None
) -> Config:
    """Defaults plus every top-level setting that is valid on its own, from a config that
    failed validation: enough to honour on_internal_error and reach Slurm the way the
    site configured, never enough to run checks from. Read with the same care as
    load_config: never from a file others can write (it could name the scontrol we run as
    root), never blocking on a FIFO."""
    values = defaults()
    read = read or read_config(explicit, env)
    if read.data is None:
        return Config(path=None, values=values, checks={})
    for key, value in read.data.items():
        if key in BY_NAME:
            with contextlib.suppress(ConfigError):
                values.update(parse_settings({key: value}, str(read.path), BY_NAME, ()))
    return Config(path=read.path, values=values, checks={})


def with_overrides(config: Config, **values: Any) -> Config:
    return replace(config, values={**config.values, **values})
