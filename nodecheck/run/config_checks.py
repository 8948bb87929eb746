"""The config's tables keyed by check id: `[checks."<id>"]` and `[hysteresis."<id>"]`.

A check table holds the keys every check accepts (registry.COMMON_KEYS) and the check's own
options, whose type, choices and range the check declares as `Option`s in its
`@check(...)`: the schema lives with the check, and is applied here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from nodecheck.checks.registry import ALL_PHASES, COMMON_KEYS, Check, Option
from nodecheck.run.config_file import ConfigError
from nodecheck.run.config_schema import DEEP_MAX_S, require_type


@dataclass(frozen=True)
class Hysteresis:
    """A WARN of this check on the same component `warn_count` times within `window_s`
    (this run included) becomes a FAIL."""

    warn_count: int
    window_s: float


def parse_hysteresis(
    tables: Any, where: str, registry: Mapping[str, Check]
) -> dict[str, Hysteresis]:
    """`[hysteresis."ib.counters"]` with `warn_count` (2..1000) and `window_s` (0..30 days]."""
    out = {}
    for cid, here, table in _per_check_tables(tables, where, registry):
        unknown = set(table) - {"warn_count", "window_s"}
        if unknown:
            raise ConfigError(
                f"{here}: unknown key(s) {sorted(unknown)} (known: warn_count, window_s)"
            )
        if "warn_count" not in table or "window_s" not in table:
            raise ConfigError(f"{here}: needs both warn_count and window_s")
        require_type(f"{here}.warn_count", table["warn_count"], int)
        require_type(f"{here}.window_s", table["window_s"], (int, float))
        if not 2 <= table["warn_count"] <= 1000:
            raise ConfigError(f"{here}.warn_count must be in [2, 1000]")
        if not 0 < table["window_s"] <= 30 * 86400:
            raise ConfigError(f"{here}.window_s must be in (0, 2592000] (30 days)")
        out[cid] = Hysteresis(int(table["warn_count"]), float(table["window_s"]))
    return out


def parse_check_tables(
    tables: Any, where: str, registry: Mapping[str, Check]
) -> dict[str, dict[str, Any]]:
    return {
        cid: _parse_check_table(table, here, registry[cid])
        for cid, here, table in _per_check_tables(tables, where, registry)
    }


def report_only_setting(value: Any) -> bool | tuple[str, ...] | None:
    """A check table's `report_only` as CheckSettings holds it (run/report_only.py)."""
    return tuple(value) if isinstance(value, list) else value


def _per_check_tables(
    tables: Any, where: str, registry: Mapping[str, Check]
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(check id, where, table) for each `"<check-id>" = { ... }` of a table keyed by check."""
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: must be a table of check tables")
    for cid, table in tables.items():
        here = f"{where}.{cid}"
        if cid not in registry:
            raise ConfigError(f"{here}: unknown check (see `nodecheck list`)")
        if not isinstance(table, dict):
            raise ConfigError(f"{here}: must be a table")
        yield cid, here, table


def _parse_check_table(table: Mapping[str, Any], where: str, chk: Check) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key == "enabled":
            require_type(f"{where}.enabled", value, bool)
        elif key == "timeout_s":
            require_type(f"{where}.timeout_s", value, (int, float))
            # A deep check measures for minutes (dcgmi diag -r 3 takes most of an hour).
            most = DEEP_MAX_S if chk.tier == "deep" else 600
            if not 0 < value <= most:
                raise ConfigError(f"{where}.timeout_s must be in (0, {most}]")
        elif key == "phases":
            names = value if isinstance(value, list) else None
            # Each item a string first: a table in the list is unhashable, not a phase.
            if names is None or not all(isinstance(p, str) and p in ALL_PHASES for p in names):
                raise ConfigError(f"{where}.phases must be a list drawn from {sorted(ALL_PHASES)}")
        elif key == "report_only":
            _require_report_only(f"{where}.report_only", value, chk)
        elif key in chk.options:
            _require_option(f"{where}.{key}", value, chk.options[key])
        else:
            known = ", ".join([*COMMON_KEYS, *chk.options]) or "none"
            raise ConfigError(f"{where}: unknown option {key!r} (known: {known})")
        out[key] = value
    return out


def _require_report_only(where: str, value: Any, chk: Check) -> None:
    """true, false, or a list of the check's declared signals (a typo is refused here, not
    found out by the drain it failed to hold back)."""
    if isinstance(value, bool):
        return
    known = sorted(chk.signals)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected true, false or a list of signals {known}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown signals {unknown} (this check's signals: {known})")


def _require_option(where: str, value: Any, opt: Option) -> None:
    require_type(where, value, opt.kind)
    if opt.item is None:
        _require_allowed(where, value, opt)
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            require_type(f"{where}[{i}]", item, opt.item)
            _require_allowed(f"{where}[{i}]", item, opt)
    elif isinstance(value, dict):
        for key, item in value.items():
            require_type(f"{where}.{key}", item, opt.item)
            _require_allowed(f"{where}.{key}", item, opt)


def _require_allowed(where: str, value: Any, opt: Option) -> None:
    """The option's declared choices and range (Option.choices, .low, .high)."""
    if opt.choices and value not in opt.choices:
        raise ConfigError(f"{where}: must be one of {list(opt.choices)}, not {value!r}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if (opt.low is not None and value < opt.low) or (opt.high is not None and value > opt.high):
        low = "-inf" if opt.low is None else opt.low
        high = "inf" if opt.high is None else opt.high
        raise ConfigError(f"{where}: must be in [{low}, {high}], not {value!r}")
