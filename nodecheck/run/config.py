"""Load, validate and resolve the TOML configuration for one node.

Search order for the file: `--config`, `$NODECHECK_CONFIG`, `nodecheck.toml` beside
`$SLURM_CONF` (slurmd passes SLURM_CONF to Prolog/Epilog), `/etc/nodecheck/nodecheck.toml`.
An explicitly named file that is missing is an error; with no file at all, built-in
defaults apply. Every error is a ConfigError naming the key at fault.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nodecheck.checks.context import NodeSettings
from nodecheck.checks.registry import ALL_PHASES, COMMON_KEYS, Check, Option
from nodecheck.core.codes import DEFAULT_BUDGET_S
from nodecheck.hostlist import host_matches, validate_pattern
from nodecheck.log import TARGETS as LOG_TARGETS
from nodecheck.run.config_file import (  # noqa: F401 (the config's public names)
    DEFAULT_PATH,
    ConfigError,
    ConfigRead,
    find_config_path,
    read_config,
)

ON_INTERNAL_ERROR = ("pass", "drain")
BACKENDS = ("auto", "pyslurm", "scontrol")


# The longest a deep check, or a deep run, may be given (a day).
DEEP_MAX_S = 86400


# Top-level settings: name -> (accepted types, default). Paths are given as strings.
_SETTINGS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "budget_s": ((int, float), DEFAULT_BUDGET_S),
    "on_internal_error": (str, "pass"),
    "dry_run": (bool, False),
    "disabled": (bool, False),
    "killswitch_file": (str, "/etc/nodecheck/disabled"),
    "log_file": (str, "/var/log/nodecheck/nodecheck.log"),
    # Where log lines go (nodecheck/log.py): any of "stderr", "file", "syslog", "journald".
    # One name or a list.
    "log_target": ((str, list), ["stderr", "file"]),
    "state_dir": (str, "/var/lib/nodecheck"),
    # Where a run keeps what it could not write to state_dir (read-only, full) until it
    # can (nodecheck/store/unsaved.py): root-only, best on a tmpfs apart from state_dir.
    "state_fallback_dir": (str, "/run/nodecheck/unsaved"),
    "slurm_backend": (str, "auto"),
    "scontrol": (str, "/usr/bin/scontrol"),
    "slurm_conf": (str, ""),
    "drain_attempts": (int, 3),
    "resume_after_passes": (int, 1),
    "probe_memory_mb": (int, 1024),
    # Budget of a run that includes deep checks (docs/deep.md); 0: sized from their timeouts.
    "deep_budget_s": ((int, float), 0),
    "sysfs_root": (str, "/sys"),
    "procfs_root": (str, "/proc"),
    "nvml": (str, "real"),
    # History (nodecheck/store/history.py): the last N runs, none older than D days.
    "history_max_rows": (int, 10000),
    "history_max_days": ((int, float), 30),
    # A node drained more than flap_max_drains times within flap_window_s stays drained
    # ("flapping") until an admin resumes it; 0 turns flap control off.
    "flap_max_drains": (int, 3),
    "flap_window_s": ((int, float), 86400),
    # Drain circuit breaker (nodecheck/run/breaker.py): no nodecheck drain past this share of a
    # partition (but always allow breaker_floor nodes), nor past breaker_max_drains drains
    # within breaker_window_min minutes cluster-wide. 0 turns a limit off.
    "breaker_max_share": ((int, float), 0.10),
    "breaker_floor": (int, 3),
    "breaker_max_drains": (int, 20),
    "breaker_window_min": ((int, float), 10),
    # Before its first drain a node waits a random 0..breaker_jitter_s seconds, so that a
    # wave of simultaneous failures reaches the breaker spread out; 0 turns it off.
    "breaker_jitter_s": ((int, float), 2.0),
    # While the breaker is open: "run" fails open (no drain by any route, exit 0, the job
    # runs, the node is recorded as held back); "fail" exits non-zero and Slurm drains.
    "breaker_open_action": (str, "run"),
    # "validation": health never resumes nodecheck's own drain by itself; the node waits,
    # drained, for `nodecheck validate --pending` (the quarantine loop) to return it.
    "resume_via": (str, "resume"),
    # A node that has never passed a validation job is drained by health (which slurmd also
    # runs when it starts, before the node takes a job) until the quarantine loop validates it.
    "validate_new_nodes": (bool, False),
    # Drains by these checks are never resumed by the health phase: their fault is gone
    # from view once read (an XID passes the next run), so a human decides.
    "manual_resume_checks": (list, ["gpu.xid", "fabric.preflight"]),
    # Job-scoped prolog/epilog (nodecheck/probes/jobscope.py): a failure outside the job's GPUs
    # and the HCAs local to them drains the node but lets the job run.
    "job_scoped": (bool, False),
    "job_scope_hca": (str, "pcie"),
    # node_exporter textfile-collector file; "" disables metrics. May contain {node}.
    "metrics_file": (str, "/var/lib/node_exporter/textfile_collector/nodecheck.prom"),
    # false: a healthy prolog/epilog leaves the metrics file to the next health run (or the
    # next run that finds a problem) and keeps prometheus_client off job start.
    "metrics_on_job_path": (bool, False),
    # The quarantine loop (nodecheck/quarantine, docs/operations.md): validation jobs run
    # these checks inside this maintenance reservation; failures climb the escalation
    # ladder; alerts go to an Alertmanager ("" for none).
    "validate_reservation": (str, "nodecheck_validation"),
    "validate_quick_checks": (list, ["deep.*"]),
    "validate_full_checks": (list, ["deep.*", "gpu.*", "ib.*", "host.*"]),
    "validate_timeout_s": ((int, float), 7200),
    "validate_command": (str, ""),
    # validate runs serialise their changes to the reservation on this lock (flock); give
    # every host that runs `nodecheck validate` the same file (a shared filesystem) or run
    # it from one host.
    "validate_lock_file": (str, "/run/lock/nodecheck-validate.lock"),
    # validate looks at its jobs (one squeue for all of them) and, when a step needs it, the
    # node table (once) every validate_poll_s seconds; --idle asks slurmdbd for the last
    # validation within validate_idle_window_days (older counts as never validated).
    "validate_poll_s": ((int, float), 20),
    "validate_idle_window_days": ((int, float), 30),
    # The fabric stage (quarantine/fabric_stage.py): a lone quarantined node runs deep.fabric
    # with up to validate_fabric_partner_count idle nodes of this hostlist, never judged.
    "validate_fabric_partners": (str, ""),
    "validate_fabric_partner_count": (int, 1),
    # > 0: the fabric stage runs deep.fabric once per GPU index 0..N-1 (one rail each).
    "validate_fabric_rails": (int, 0),
    # validate-job keeps its deep figures per GPU in the series store and judges each against
    # the median of the node's own earlier validations (checks/trend/baseline.py): WARN past
    # warn_drop, FAIL past fail_drop in two validations in a row. 0 drop: that level off.
    "validate_baseline": (bool, True),
    "validate_baseline_warn_drop": ((int, float), 0.10),
    "validate_baseline_fail_drop": ((int, float), 0.20),
    "validate_baseline_min_runs": (int, 3),
    "validate_baseline_window_days": ((int, float), 180),
    "escalation": (list, ["drain", "reboot", "replace"]),
    "alert_url": (str, ""),
}
# Numeric settings' ranges: name -> (low, high, low end excluded, note). A value outside
# is refused at load time, not found out by the run that needs it.
_RANGES: dict[str, tuple[float, float, bool, str]] = {
    "budget_s": (0, 3600, True, ""),
    "deep_budget_s": (0, DEEP_MAX_S, False, " (0: sized)"),
    "drain_attempts": (1, 10, False, ""),
    "resume_after_passes": (1, 1000, False, ""),
    "history_max_rows": (10, 1_000_000, False, ""),
    "history_max_days": (0, 3650, True, ""),
    "flap_max_drains": (0, 1000, False, " (0: off)"),
    "flap_window_s": (0, 30 * 86400, True, " (30 days)"),
    "breaker_max_share": (0, 1, False, " (0: off)"),
    "breaker_floor": (0, 100_000, False, ""),
    "validate_poll_s": (0, 300, True, ""),
    "validate_idle_window_days": (0, 3650, True, ""),
    "validate_fabric_partner_count": (1, 64, False, ""),
    "validate_fabric_rails": (0, 64, False, " (0: one round)"),
    "validate_baseline_warn_drop": (0, 1, False, " (0: off)"),
    "validate_baseline_fail_drop": (0, 1, False, " (0: off)"),
    "validate_baseline_min_runs": (1, 10, False, ""),
    "validate_baseline_window_days": (0, 3650, True, ""),
    "breaker_max_drains": (0, 100_000, False, " (0: off)"),
    "breaker_window_min": (0, 7 * 1440, True, " (7 days)"),
    "breaker_jitter_s": (0, 10, False, " (0: off)"),
    "probe_memory_mb": (0, 1 << 20, False, " (0: no limit)"),
}
# The probe children's address-space limit: below this a forked Python cannot even start.
MIN_PROBE_MEMORY_MB = 128


def _in_range(value: float, low: float, high: float, low_open: bool) -> bool:
    return (low < value if low_open else low <= value) and value <= high


# What a node class may override besides its check tables.
_CLASS_OVERRIDABLE = ("budget_s", "dry_run", "disabled", "sysfs_root", "procfs_root", "nvml")


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
class Hysteresis:
    """A WARN of this check on the same component `warn_count` times within `window_s`
    (this run included) becomes a FAIL."""

    warn_count: int
    window_s: float


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
                report_only=_report_only_setting(merged.get("report_only")),
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
    values = {name: default for name, (_, default) in _SETTINGS.items()}
    values.update(
        _parse_settings(
            data, where, allowed=_SETTINGS.keys(), extra=("checks", "node_class", "hysteresis")
        )
    )
    checks = _parse_check_tables(data.get("checks", {}), f"{where}: checks", registry)
    raw_classes = data.get("node_class", [])
    if not isinstance(raw_classes, list):
        raise ConfigError(f"{where}: node_class must be an array of tables ([[node_class]])")
    classes = tuple(
        _parse_node_class(raw, f"{where}: node_class[{i}]", registry)
        for i, raw in enumerate(raw_classes)
    )
    hysteresis = _parse_hysteresis(data.get("hysteresis", {}), f"{where}: hysteresis", registry)
    return Config(
        path=path, values=values, checks=checks, node_classes=classes, hysteresis=hysteresis
    )


def _parse_hysteresis(
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
        _require_type(f"{here}.warn_count", table["warn_count"], int)
        _require_type(f"{here}.window_s", table["window_s"], (int, float))
        if not 2 <= table["warn_count"] <= 1000:
            raise ConfigError(f"{here}.warn_count must be in [2, 1000]")
        if not 0 < table["window_s"] <= 30 * 86400:
            raise ConfigError(f"{here}.window_s must be in (0, 2592000] (30 days)")
        out[cid] = Hysteresis(int(table["warn_count"]), float(table["window_s"]))
    return out


def _parse_settings(
    data: Mapping[str, Any], where: str, allowed: Any, extra: tuple[str, ...]
) -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if key in extra:
            continue
        if key not in allowed:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        kinds, _ = _SETTINGS[key]
        _require_type(f"{where}: {key}", value, kinds)
        out[key] = value
    if "on_internal_error" in out and out["on_internal_error"] not in ON_INTERNAL_ERROR:
        raise ConfigError(f"{where}: on_internal_error must be one of {ON_INTERNAL_ERROR}")
    if "slurm_backend" in out and out["slurm_backend"] not in BACKENDS:
        raise ConfigError(f"{where}: slurm_backend must be one of {BACKENDS}")
    for key, (low, high, low_open, note) in _RANGES.items():
        if key in out and not _in_range(out[key], low, high, low_open):
            opening = "(" if low_open else "["
            raise ConfigError(f"{where}: {key} must be in {opening}{low}, {high}]{note}")
    if out.get("probe_memory_mb", 0) and out["probe_memory_mb"] < MIN_PROBE_MEMORY_MB:
        raise ConfigError(
            f"{where}: probe_memory_mb must be 0 (no limit) or at least {MIN_PROBE_MEMORY_MB}"
        )
    if out.get("breaker_open_action", "run") not in ("run", "fail"):
        raise ConfigError(f"{where}: breaker_open_action must be 'run' or 'fail'")
    if out.get("resume_via", "resume") not in ("resume", "validation"):
        raise ConfigError(f"{where}: resume_via must be 'resume' or 'validation'")
    if "manual_resume_checks" in out and not all(
        isinstance(c, str) for c in out["manual_resume_checks"]
    ):
        raise ConfigError(f"{where}: manual_resume_checks must be a list of check ids")
    if isinstance(out.get("log_target"), str):
        out["log_target"] = [out["log_target"]]
    if "log_target" in out and not all(t in LOG_TARGETS for t in out["log_target"]):
        raise ConfigError(f"{where}: log_target entries must be among {LOG_TARGETS}")
    if "job_scope_hca" in out and out["job_scope_hca"] not in ("pcie", "numa"):
        raise ConfigError(f"{where}: job_scope_hca must be 'pcie' or 'numa'")
    if "nvml" in out and not (out["nvml"] == "real" or out["nvml"].startswith("replay:")):
        raise ConfigError(f"{where}: nvml must be 'real' or 'replay:/path/to/snapshot.json'")
    _check_quarantine_settings(out, where)
    return out


def _check_quarantine_settings(out: Mapping[str, Any], where: str) -> None:
    from nodecheck.quarantine.ladder import LADDER_STEPS

    ladder = out.get("escalation", [])
    if not all(step in LADDER_STEPS for step in ladder):
        raise ConfigError(f"{where}: escalation steps must be drawn from {list(LADDER_STEPS)}")
    for key in ("validate_quick_checks", "validate_full_checks"):
        if not all(isinstance(p, str) and p for p in out.get(key, [])):
            raise ConfigError(f"{where}: {key} must be a list of check ids or globs")
    if "validate_timeout_s" in out and not 60 <= out["validate_timeout_s"] <= 7 * 86400:
        raise ConfigError(f"{where}: validate_timeout_s must be in [60, 604800]")
    url = out.get("alert_url", "")
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: alert_url must start with http:// or https://")
    command = out.get("validate_command", "")
    if command and not command.startswith("/"):
        raise ConfigError(f"{where}: validate_command must be an absolute path")
    partners = out.get("validate_fabric_partners", "")
    if partners:
        from nodecheck.hostlist import expand

        try:
            expand(partners)
        except ValueError as exc:
            raise ConfigError(f"{where}: validate_fabric_partners: {exc}") from None
    lock = out.get("validate_lock_file", "/run/lock/nodecheck-validate.lock")
    if not lock.startswith("/") or lock.endswith("/"):
        raise ConfigError(f"{where}: validate_lock_file must be an absolute file path")


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
    overrides = _parse_settings(body, where, allowed=_CLASS_OVERRIDABLE, extra=("checks",))
    checks = _parse_check_tables(body.get("checks", {}), f"{where}: checks", registry)
    return NodeClass(name=name, patterns=tuple(patterns), overrides=overrides, checks=checks)


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


def _parse_check_tables(
    tables: Any, where: str, registry: Mapping[str, Check]
) -> dict[str, dict[str, Any]]:
    return {
        cid: _parse_check_table(table, here, registry[cid])
        for cid, here, table in _per_check_tables(tables, where, registry)
    }


def _parse_check_table(table: Mapping[str, Any], where: str, chk: Check) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key == "enabled":
            _require_type(f"{where}.enabled", value, bool)
        elif key == "timeout_s":
            _require_type(f"{where}.timeout_s", value, (int, float))
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


def _report_only_setting(value: Any) -> bool | tuple[str, ...] | None:
    return tuple(value) if isinstance(value, list) else value


def _require_option(where: str, value: Any, opt: Option) -> None:
    _require_type(where, value, opt.kind)
    if opt.item is None:
        _require_allowed(where, value, opt)
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _require_type(f"{where}[{i}]", item, opt.item)
            _require_allowed(f"{where}[{i}]", item, opt)
    elif isinstance(value, dict):
        for key, item in value.items():
            _require_type(f"{where}.{key}", item, opt.item)
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


def _require_type(where: str, value: Any, kinds: type | tuple[type, ...]) -> None:
    kinds_t = kinds if isinstance(kinds, tuple) else (kinds,)
    # bool is an int in Python, but `expected = true` is a mistake, not a count.
    ok = isinstance(value, kinds_t) and not (isinstance(value, bool) and bool not in kinds_t)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds_t)
        raise ConfigError(f"{where}: expected {names}, got {type(value).__name__} {value!r}")


def salvage_config(
    explicit: str | None, env: Mapping[str, str], read: ConfigRead | None = None
) -> Config:
    """Defaults plus every top-level setting that is valid on its own, from a config that
    failed validation: enough to honour on_internal_error and reach Slurm the way the
    site configured, never enough to run checks from. Read with the same care as
    load_config: never from a file others can write (it could name the scontrol we run as
    root), never blocking on a FIFO."""
    values = {name: default for name, (_, default) in _SETTINGS.items()}
    read = read or read_config(explicit, env)
    if read.data is None:
        return Config(path=None, values=values, checks={})
    for key, value in read.data.items():
        if key in _SETTINGS:
            with contextlib.suppress(ConfigError):
                values.update(_parse_settings({key: value}, str(read.path), _SETTINGS.keys(), ()))
    return Config(path=read.path, values=values, checks={})


def with_overrides(config: Config, **values: Any) -> Config:
    return replace(config, values={**config.values, **values})
