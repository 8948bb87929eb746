"""The check registry: every check declares its id, phases, timeout and options here.

A check is a plain function `(ctx: CheckContext) -> Iterable[CheckResult]`, registered
with the `@check(...)` decorator in its family module under `nodecheck/checks/`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from nodecheck.core.codes import PHASES, TIERS
from nodecheck.core.results import REMEDIES, SEVERITIES, CheckResult, Status

if TYPE_CHECKING:
    from nodecheck.checks.context import CheckContext

ALL_PHASES = frozenset(PHASES)
# What a deep run's sized budget adds to its checks' timeouts: the probe child's start,
# the torch import, and the reply to Slurm or the caller.
DEEP_MARGIN_S = 15.0
# Keys every check table in the config accepts, besides the check's own options.
# `report_only` (run/report_only.py): true, false, or a list of the check's new signals.
COMMON_KEYS = ("enabled", "timeout_s", "phases", "report_only")

_ID = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Option:
    """One tunable of a check: its accepted type(s), default and a line of help."""

    kind: type | tuple[type, ...]
    default: Any
    help: str
    # For list options: the type of each element; for dict options: the type of each value.
    item: type | tuple[type, ...] | None = None
    # The values allowed (of the option, or of each element/value); empty: any of its type.
    # The config loader refuses others at load time, so a typo never waits for a job.
    choices: tuple[Any, ...] = ()
    # Bounds (inclusive) of a number, or of each numeric element/value; None: unbounded.
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class NvmlCanary:
    """A gpu.* check's own selftest canary, as plain data (nodecheck/selftest builds it, so
    a check on a new NVML field needs nothing added there; docs/selftest.md).

    The good input is the selftest's healthy 8x H100 (nodecheck/selftest/nvml_data.py) with
    `healthy` set on every GPU; the bad input is the same with `values` set on GPU `gpu`.
    Each is a top-level field of the NVML model's Gpu (nodecheck.probes.nvml.model) with its
    replay-file value: a nested record (remapped_rows, fabric) is given whole, and a misspelt
    name fails the canary (the selftest reports it as an error, never as a pass). The check
    must FAIL the bad input on `component` (gpuN by default), or WARN where the node sets
    the check's `severity` option to "warn"."""

    gpu: int
    values: Mapping[str, Any]
    says: str  # the fault in one line, e.g. "gpu2: 88 C at idle" (the case's name)
    component: str | None = None  # what the FAIL must name; None: f"gpu{gpu}"
    # Options the canary runs with: what describes the canary's own hardware (expected
    # counts, models, limits), never the check's judgement (thresholds stay the node's).
    pin: Mapping[str, Any] = field(default_factory=dict)
    # Fields the healthy node needs and the shared healthy H100 lacks (set on every GPU).
    healthy: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.gpu < 0 or not self.values or not self.says:
            raise ValueError("NvmlCanary needs a GPU index >= 0, values and says")

    @property
    def fails_on(self) -> str:
        return self.component or f"gpu{self.gpu}"


@dataclass(frozen=True)
class Check:
    """A registered check: its function and what the runner and config need to know."""

    id: str
    func: Callable[[CheckContext], Iterable[CheckResult]]
    phases: frozenset[str]
    timeout_s: float
    summary: str
    options: Mapping[str, Option] = field(default_factory=dict)
    # Checks sharing a group run one after another in the same isolated child, so they
    # can share one probe (e.g. one NVML session for every gpu.* check).
    group: str | None = None
    enabled_by_default: bool = True
    explain: str = ""
    # Defaults for failing results that do not set their own (see results.SEVERITIES/REMEDIES).
    severity: str = "high"
    remedy: str = "admin"
    tier: str = "fast"
    # Address-space limit (RLIMIT_AS) of the probe child that runs this check: None takes
    # the run's probe_memory_mb, 0 is none (PyTorch maps ~660 MB of address space on load).
    memory_limit_mb: int | None = None
    # Signals new to a platform nodecheck has not been proven on (name -> where it is new):
    # a FAIL resting only on them is report-only (WARN + metric, no drain) until the site
    # sets the check's `report_only` (run/report_only.py). DESIGN.md: "A check new to a
    # platform ships report-only".
    new_signals: Mapping[str, str] = field(default_factory=dict)
    # Every signal the check marks its FAILs with (new or not): what the site's `report_only`
    # list may name (a site may hold back an old signal too). The new ones are among them.
    signals: Mapping[str, str] = field(default_factory=dict)
    # Its selftest canary, declared with the check (nodecheck/selftest builds it); None: a
    # hand-written one in nodecheck/selftest/canaries.py, a waiver there, or none.
    canary: NvmlCanary | None = None

    @property
    def area(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def probe_group(self) -> str:
        """The probe process it runs in: its group's, or one of its own."""
        return self.group or self.id


_REGISTRY: dict[str, Check] = {}


def check(
    check_id: str,
    *,
    summary: str,
    phases: Iterable[str] = ALL_PHASES,
    timeout_s: float = 5.0,
    options: Mapping[str, Option] | None = None,
    group: str | None = None,
    enabled_by_default: bool = True,
    explain: str = "",
    severity: str = "high",
    remedy: str = "admin",
    tier: str = "fast",
    memory_limit_mb: int | None = None,
    new_signals: Mapping[str, str] | None = None,
    signals: Mapping[str, str] | None = None,
    canary: NvmlCanary | None = None,
) -> Callable[[Callable[[CheckContext], Iterable[CheckResult]]], Callable[..., Any]]:
    """Register the decorated function as check `check_id`."""

    def register(func: Callable[[CheckContext], Iterable[CheckResult]]) -> Callable[..., Any]:
        if not _ID.match(check_id):
            raise ValueError(f"check id {check_id!r} is not of the form area.name")
        if check_id in _REGISTRY:
            raise ValueError(f"check {check_id!r} registered twice")
        bad = set(phases) - ALL_PHASES
        if bad:
            raise ValueError(f"check {check_id!r}: unknown phases {sorted(bad)}")
        if severity not in SEVERITIES or remedy not in REMEDIES:
            raise ValueError(f"check {check_id!r}: unknown severity/remedy {severity}/{remedy}")
        if tier not in TIERS:
            raise ValueError(f"check {check_id!r}: unknown tier {tier!r} (one of {TIERS})")
        if memory_limit_mb is not None and memory_limit_mb < 0:
            raise ValueError(f"check {check_id!r}: memory_limit_mb must be >= 0 (0: none)")
        clash = set(options or {}) & set(COMMON_KEYS)
        if clash:
            raise ValueError(f"check {check_id!r}: option names {sorted(clash)} are reserved")
        if canary is not None and tier != "fast":
            raise ValueError(f"check {check_id!r}: only a fast check has a selftest canary")
        _REGISTRY[check_id] = Check(
            id=check_id,
            func=func,
            phases=frozenset(phases),
            timeout_s=timeout_s,
            summary=summary,
            options=dict(options or {}),
            group=group,
            enabled_by_default=enabled_by_default,
            explain=explain or func.__doc__ or "",
            severity=severity,
            remedy=remedy,
            tier=tier,
            memory_limit_mb=memory_limit_mb,
            new_signals=dict(new_signals or {}),
            signals={**(signals or {}), **(new_signals or {})},
            canary=canary,
        )
        return func

    return register


def all_checks() -> dict[str, Check]:
    """Every registered check, loading the check families on first use."""
    from nodecheck import checks

    checks.load_families()
    return dict(sorted(_REGISTRY.items()))


def in_tier(registry: Mapping[str, Check], tier: str | None) -> dict[str, Check]:
    """The checks of `tier` (all of them for None: a hook run, where phases decide)."""
    if tier is None:
        return dict(registry)
    if tier not in TIERS:
        raise KeyError(tier)
    return {cid: chk for cid, chk in registry.items() if chk.tier == tier}


def run_budget_s(
    phase: str, planned: Iterable[tuple[Check, float]], budget_s: float, deep_budget_s: float
) -> float:
    """The budget of a run of these (check, timeout) pairs. A hook's is `budget_s`, which
    the site matched to Slurm's own timeouts (a deep check configured into an epilog must
    fit in it). Deep checks run one after another (one group, one device at a time), so a
    manual run with any gets `deep_budget_s`, or, when that is 0, the sum of their timeouts
    plus a margin for starting the probe child and reporting."""
    deep = [timeout for chk, timeout in planned if chk.tier == "deep"]
    if phase != "manual" or not deep:
        return budget_s
    if deep_budget_s > 0:
        return max(budget_s, deep_budget_s)
    return max(budget_s, sum(deep) + DEEP_MARGIN_S)


def match_ids(patterns: Iterable[str], known: Iterable[str]) -> list[str]:
    """Expand `--check` arguments (ids or globs such as `gpu.*`) against known ids."""
    known = list(known)
    chosen: list[str] = []
    for pattern in patterns:
        hits = [cid for cid in known if fnmatch.fnmatchcase(cid, pattern)]
        if not hits:
            raise KeyError(pattern)
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def with_defaults(result: CheckResult, registry: Mapping[str, Check]) -> CheckResult:
    """Fill in severity and remedy of a FAIL/WARN/ERROR from its check's declaration."""
    if result.status in (Status.PASS, Status.SKIP) or (result.severity and result.remedy):
        return result
    chk = registry.get(result.check_id)
    if result.status is Status.ERROR:
        severity, remedy = "low", "admin"  # nodecheck's own problem, not the node's
    else:
        severity = chk.severity if chk else "high"
        remedy = chk.remedy if chk else "admin"
    return replace(result, severity=result.severity or severity, remedy=result.remedy or remedy)
