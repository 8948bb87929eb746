"""The top-level settings of nodecheck.toml, declared once.

`SETTINGS` is the one table of them: each row gives the name, the accepted type(s), the
default, the range or allowed values (`rules`), whether a [[node_class]] may override it,
and a line on why it exists. The defaults, the set a node class may override, the type
check and every error message derive from it; `parse_settings` is the only validator.

Why a table in our own code and not msgspec (measured for issue 30): msgspec's decode
errors are its own text ("Expected `float`, got `str` - at `$.budget_s`", "Object contains
unknown field `bugdet_s`", "Expected `float` > 0.0"), while ours are a contract that
operators, docs and tests read ("<file>: budget_s: expected int or float, got str 'ten'",
"<file>: budget_s must be in (0, 3600]", "<file>: unknown setting 'bugdet_s'"); keeping
them means parsing msgspec's messages back, which is more code than the rules below. It
would also add 10-21 ms of imports (measured on the 2-core VM) to the hook's start, against
a healthy in-process prolog of about 120 ms (docs/performance.md).

The per-check tables (`[checks."<id>"]`), whose schema each check declares as `Option`s,
are validated in run/config_checks.py.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from nodecheck.core.codes import DEFAULT_BUDGET_S
from nodecheck.hostlist import expand
from nodecheck.log import TARGETS as LOG_TARGETS
from nodecheck.run.config_file import ConfigError

# The quarantine loop's escalation steps (quarantine/ladder.py takes them in the site's
# order); declared here so that the config refuses a misspelt step at load time.
LADDER_STEPS = ("drain", "reboot", "replace")
# The longest a deep check, or a deep run, may be given (a day).
DEEP_MAX_S = 86400
# The probe children's address-space limit: below this a forked Python cannot even start.
MIN_PROBE_MEMORY_MB = 128

Kinds = type | tuple[type, ...]
NUM = (int, float)


class Rule(Protocol):
    def problem(self, value: Any) -> str | None:
        """What follows the key in the error message; None when the value is fine."""


@dataclass(frozen=True)
class Range:
    """A number in [low, high], or (low, high] when low_open; `note` ends the message."""

    low: float
    high: float
    low_open: bool = False
    note: str = ""

    def problem(self, value: Any) -> str | None:
        above = self.low < value if self.low_open else self.low <= value
        if above and value <= self.high:
            return None
        opening = "(" if self.low_open else "["
        return f" must be in {opening}{self.low}, {self.high}]{self.note}"


@dataclass(frozen=True)
class OneOf:
    """One of a few values, listed in the message as a tuple."""

    values: tuple[str, ...]

    def problem(self, value: Any) -> str | None:
        return None if value in self.values else f" must be one of {self.values}"


@dataclass(frozen=True)
class Either:
    """One of two values, spelled out in the message."""

    first: str
    second: str

    def problem(self, value: Any) -> str | None:
        if value in (self.first, self.second):
            return None
        return f" must be {self.first!r} or {self.second!r}"


@dataclass(frozen=True)
class Holds:
    """A condition on the value (`each`: on every item of a list), and what it must be."""

    test: Callable[[Any], bool]
    says: str
    each: bool = False

    def problem(self, value: Any) -> str | None:
        ok = all(self.test(v) for v in value) if self.each else self.test(value)
        return None if ok else f" {self.says}"


@dataclass(frozen=True)
class Hostlist:
    """A Slurm hostlist expression ("" for none), refused with the parser's reason."""

    def problem(self, value: Any) -> str | None:
        if not value:
            return None
        try:
            expand(value)
        except ValueError as exc:
            return f": {exc}"
        return None


@dataclass(frozen=True)
class Setting:
    """One top-level setting. Paths are strings; `one_or_list`: a lone string is a list of one."""

    name: str
    kinds: Kinds
    default: Any
    why: str
    rules: tuple[Rule, ...] = ()
    per_class: bool = False
    one_or_list: bool = False


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_pattern(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


_IDS = Holds(_is_str, "must be a list of check ids", each=True)
_GLOBS = Holds(_is_pattern, "must be a list of check ids or globs", each=True)
# Rows grouped by topic (README.md lists them for operators). A file with several bad
# values is refused for the first in this order, after any unknown key or wrong type.
SETTINGS: tuple[Setting, ...] = (
    Setting("budget_s", NUM, DEFAULT_BUDGET_S, "the whole run, probes and drain, ends within this",
            (Range(0, 3600, True),), per_class=True),
    Setting("on_internal_error", str, "pass", "what nodecheck's own failure does to the node",
            (OneOf(("pass", "drain")),)),
    Setting("dry_run", bool, False, "log \"would drain\" instead of draining; never fail a job",
            per_class=True),
    Setting("disabled", bool, False, "every phase becomes a logged no-op",
            per_class=True),
    Setting("killswitch_file", str, "/etc/nodecheck/disabled",
            "while this file exists, every phase is a logged no-op"),
    Setting("log_file", str, "/var/log/nodecheck/nodecheck.log",
            "JSON lines of the 'file' target; '' for none"),
    Setting("log_target", (str, list), ["stderr", "file"],
            "where log lines go (nodecheck/log.py): one target or a list",
            (Holds(lambda t: t in LOG_TARGETS, f"entries must be among {LOG_TARGETS}", each=True),),
            one_or_list=True),
    Setting("state_dir", str, "/var/lib/nodecheck",
            "root-only state (SQLite); {node} becomes the node name"),
    Setting("state_fallback_dir", str, "/run/nodecheck/unsaved",
            "what a run could not write to state_dir waits here (store/unsaved.py)"),
    Setting("slurm_backend", str, "auto", "how nodecheck talks to Slurm (slurm/backend.py)",
            (OneOf(("auto", "pyslurm", "scontrol")),)),
    Setting("scontrol", str, "/usr/bin/scontrol", "an absolute path: Slurm gives prologs no PATH"),
    Setting("slurm_conf", str, "", "for HealthCheckProgram, which gets no SLURM_CONF"),
    Setting("drain_attempts", int, 3,
            "no longer read (calls retry until the budget ends); kept so old configs load",
            (Range(1, 10),)),
    Setting("resume_after_passes", int, 1,
            "consecutive health passes before nodecheck resumes its own drain",
            (Range(1, 1000),)),
    Setting("probe_memory_mb", int, 1024,
            "address-space limit of each probe process (a check may declare its own)",
            (Range(0, 1 << 20, note=" (0: no limit)"),
             Holds(lambda v: v == 0 or v >= MIN_PROBE_MEMORY_MB,
                   f"must be 0 (no limit) or at least {MIN_PROBE_MEMORY_MB}"))),
    Setting("deep_budget_s", NUM, 0, "budget of a run with deep checks (docs/deep.md)",
            (Range(0, DEEP_MAX_S, note=" (0: sized)"),)),
    Setting("sysfs_root", str, "/sys",
            "where probes read /sys; tests point it at a built tree", per_class=True),
    Setting("procfs_root", str, "/proc", "where probes read /proc", per_class=True),
    Setting("nvml", str, "real", "the driver's NVML, or a recorded NVML state replayed",
            (Holds(lambda v: v == "real" or v.startswith("replay:"),
                   "must be 'real' or 'replay:/path/to/snapshot.json'"),), per_class=True),
    # History (store/history.py): the last N runs, none older than D days.
    Setting("history_max_rows", int, 10000, "history rows kept per node", (Range(10, 1_000_000),)),
    Setting("history_max_days", NUM, 30, "age of the oldest history kept", (Range(0, 3650, True),)),
    # More than flap_max_drains drains within flap_window_s: the node stays drained
    # ("flapping") until an admin resumes it.
    Setting("flap_max_drains", int, 3, "more drains than this within the window: held as flapping",
            (Range(0, 1000, note=" (0: off)"),)),
    Setting("flap_window_s", NUM, 86400, "the window flap_max_drains counts in",
            (Range(0, 30 * 86400, True, " (30 days)"),)),
    # The drain circuit breaker (run/breaker.py); 0 turns a limit off.
    Setting("breaker_max_share", NUM, 0.10,
            "the most of a partition nodecheck drains (docs/safety.md)",
            (Range(0, 1, note=" (0: off)"),)),
    Setting("breaker_floor", int, 3, "drains of a partition always allowed, whatever the share",
            (Range(0, 100_000),)),
    Setting("breaker_max_drains", int, 20,
            "the most nodecheck drains within the window, cluster-wide",
            (Range(0, 100_000, note=" (0: off)"),)),
    Setting("breaker_window_min", NUM, 10,
            "the breaker's window; each drain holds a slurmctld slot this long",
            (Range(0, 7 * 1440, True, " (7 days)"),)),
    Setting("breaker_jitter_s", NUM, 2.0,
            "most a node waits, at random, before its first drain: spreads a wave",
            (Range(0, 10, note=" (0: off)"),)),
    Setting("breaker_open_action", str, "run",
            "breaker open: 'run' fails open (no drain, the job runs); 'fail' exits 1",
            (Either("run", "fail"),)),
    Setting("resume_via", str, "resume",
            "'validation': health never resumes nodecheck's drains; validate --pending does",
            (Either("resume", "validation"),)),
    Setting("validate_new_nodes", bool, False,
            "health drains a node that never passed validation until the loop validates it"),
    Setting("manual_resume_checks", list, ["gpu.xid", "fabric.preflight"],
            "drains held for a human: a health run does not see their fault again", (_IDS,)),
    # Job-scoped prolog/epilog (probes/jobscope.py).
    Setting("job_scoped", bool, False,
            "a failure outside the job's GPUs and their HCAs drains but lets the job run"),
    Setting("job_scope_hca", str, "pcie",
            "which HCAs are local to a GPU: its PCIe switch or its NUMA node",
            (Either("pcie", "numa"),)),
    Setting("metrics_file", str, "/var/lib/node_exporter/textfile_collector/nodecheck.prom",
            "Prometheus textfile; '' for none; {node} allowed"),
    Setting("metrics_on_job_path", bool, False,
            "false: a healthy prolog/epilog leaves the metrics file to the next health run"),
    # The quarantine loop (nodecheck/quarantine, docs/operations.md).
    Setting("validate_reservation", str, "nodecheck_validation",
            "the maintenance reservation validation jobs run in"),
    Setting("validate_quick_checks", list, ["deep.*"],
            "what a quick validation job runs", (_GLOBS,)),
    Setting("validate_full_checks", list, ["deep.*", "gpu.*", "ib.*", "host.*"],
            "what a full validation job runs", (_GLOBS,)),
    Setting("validate_timeout_s", NUM, 7200,
            "one validation job's limit (also its Slurm time limit)",
            (Range(60, 7 * 86400),)),
    Setting("validate_command", str, "",
            "the nodecheck a validation job runs; '': the one beside python",
            (Holds(lambda v: not v or v.startswith("/"), "must be an absolute path"),)),
    Setting("validate_lock_file", str, "/run/lock/nodecheck-validate.lock",
            "the flock overlapping validate runs share: one file for every host running it",
            (Holds(lambda v: v.startswith("/") and not v.endswith("/"),
                   "must be an absolute file path"),)),
    Setting("validate_poll_s", NUM, 20, "how often validate looks at its jobs (one squeue for all)",
            (Range(0, 300, True),)),
    Setting("validate_idle_window_days", NUM, 30,
            "how far back --idle asks slurmdbd for the last validation", (Range(0, 3650, True),)),
    # The fabric stage (quarantine/fabric_stage.py).
    Setting("validate_fabric_partners", str, "",
            "idle known-good nodes a lone node runs deep.fabric with (never judged)",
            (Hostlist(),)),
    Setting("validate_fabric_partner_count", int, 1, "how many partners a lone node takes",
            (Range(1, 64),)),
    Setting("validate_fabric_rails", int, 0,
            "> 0: one deep.fabric round per GPU index 0..N-1 (one rail each)",
            (Range(0, 64, note=" (0: one round)"),)),
    # Per-GPU deep figures judged against the node's own median (checks/trend/baseline.py):
    # WARN past warn_drop, FAIL past fail_drop in two validations in a row.
    Setting("validate_baseline", bool, True,
            "judge deep figures against the node's own earlier validations"),
    Setting("validate_baseline_warn_drop", NUM, 0.10, "drop below the baseline that WARNs",
            (Range(0, 1, note=" (0: off)"),)),
    Setting("validate_baseline_fail_drop", NUM, 0.20,
            "drop below the baseline that FAILs (twice in a row)",
            (Range(0, 1, note=" (0: off)"),)),
    Setting("validate_baseline_min_runs", int, 3, "earlier validations a baseline needs",
            (Range(1, 10),)),
    Setting("validate_baseline_window_days", NUM, 180,
            "age of the oldest validation a baseline uses",
            (Range(0, 3650, True),)),
    # The same figures against the median of the node class's other nodes, as their passed
    # validations published them in AdminComment (checks/trend/class_median.py): wider
    # margins than the own baseline's, a class median being taken across machines.
    Setting("validate_class_median", bool, True,
            "judge deep figures against the median of the node's class (from slurmdbd)"),
    Setting("validate_class_median_warn_drop", NUM, 0.10,
            "drop below the class median that WARNs", (Range(0, 1, note=" (0: off)"),)),
    Setting("validate_class_median_fail_drop", NUM, 0.25,
            "drop below the class median that FAILs", (Range(0, 1, note=" (0: off)"),)),
    Setting("validate_class_median_min_nodes", int, 3,
            "other nodes of the class a class median needs", (Range(1, 1000),)),
    Setting("validate_class_median_window_days", NUM, 30,
            "age of the oldest validation a class median reads", (Range(0, 3650, True),)),
    Setting("escalation", list, list(LADDER_STEPS),
            "the steps a node failing validation climbs (quarantine/ladder.py)",
            (Holds(lambda s: s in LADDER_STEPS,
                   f"steps must be drawn from {list(LADDER_STEPS)}", each=True),)),
    Setting("alert_url", str, "", "the Alertmanager nodecheck alerts; '' for none",
            (Holds(lambda v: not v or v.startswith(("http://", "https://")),
                   "must start with http:// or https://"),)),
)  # fmt: skip
BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
# What a [[node_class]] may override besides its check tables.
CLASS_OVERRIDABLE = frozenset(s.name for s in SETTINGS if s.per_class)


def defaults() -> dict[str, Any]:
    return {s.name: s.default for s in SETTINGS}


def parse_settings(
    data: Mapping[str, Any], where: str, allowed: Collection[str], extra: tuple[str, ...]
) -> dict[str, Any]:
    """The settings of `data` (keys in `extra` are someone else's), validated against the
    table: unknown keys and types first in the file's order, then the rules in the table's."""
    out = {}
    for key, value in data.items():
        if key in extra:
            continue
        if key not in allowed:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        setting = BY_NAME[key]
        require_type(f"{where}: {key}", value, setting.kinds)
        out[key] = [value] if setting.one_or_list and isinstance(value, str) else value
    for setting in SETTINGS:
        if setting.name not in out:
            continue
        for rule in setting.rules:
            problem = rule.problem(out[setting.name])
            if problem is not None:
                raise ConfigError(f"{where}: {setting.name}{problem}")
    return out


def require_type(where: str, value: Any, kinds: Kinds) -> None:
    kinds_t = kinds if isinstance(kinds, tuple) else (kinds,)
    # bool is an int in Python, but `expected = true` is a mistake, not a count.
    ok = isinstance(value, kinds_t) and not (isinstance(value, bool) and bool not in kinds_t)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds_t)
        raise ConfigError(f"{where}: expected {names}, got {type(value).__name__} {value!r}")
