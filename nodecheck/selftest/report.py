"""What a selftest found: a verdict per check and run path, as a table, JSON and metrics.

Verdicts: `ok` (every bad input caught, the good one passed), `missed-bad` (a bad input
passed: the check would let its fault through), `fired-on-good` (the healthy input
failed or warned: the check would drain healthy nodes), `error` (the check, or the
selftest, could not judge an input: an ERROR result, no result, a time limit), and
`no-canary`. A check without a canary fails the selftest unless it is waived with a
reason (the deep tier, fabric.peers, fabric.preflight), which is reported, never passed silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

VERDICTS = ("ok", "missed-bad", "fired-on-good", "error", "no-canary")
# Worst first: a check's verdict over its inputs (and over run paths) is the worst one.
_RANK = {"error": 0, "fired-on-good": 1, "missed-bad": 2, "no-canary": 3, "ok": 4}
OUTCOME_VERDICT = {"error": "error", "missed": "missed-bad", "fired": "fired-on-good"}


@dataclass(frozen=True)
class CaseResult:
    """One input's run: good inputs `passed` or `fired`, bad ones `caught` or `missed`."""

    case: str
    good: bool
    outcome: str  # passed, caught, fired, missed, error
    status: str  # the check's leading status on it ("" when it gave none)
    message: str  # the leading result, "component: message"
    reason: str | None = None  # a caught bad input: what a hook would have drained with
    duration_s: float = 0.0

    def took(self, seconds: float) -> CaseResult:
        return replace(self, duration_s=round(seconds, 3))


@dataclass(frozen=True)
class CheckVerdict:
    check: str
    via: str  # "inprocess" or "agent"
    verdict: str
    detail: str
    cases: tuple[CaseResult, ...] = ()
    counts: bool = True  # False: a waived no-canary, reported but not a failure

    @property
    def ok(self) -> bool:
        return self.verdict == "ok" or not self.counts

    @classmethod
    def judged(cls, check: str, via: str, cases: tuple[CaseResult, ...]) -> CheckVerdict:
        # In _RANK's order: a check that fails everything is said to fire on the good
        # input (its bad ones may be "missed" too, when it names the wrong component).
        wrong = [c for c in cases if c.outcome in OUTCOME_VERDICT]
        if wrong:
            first = min(wrong, key=lambda c: _RANK[OUTCOME_VERDICT[c.outcome]])
            detail = f"{first.case}: {first.status} {first.message}".replace("  ", " ")
            more = len(wrong) - 1
            detail += f" (+{more} more input(s) wrong)" if more else ""
            return cls(check, via, OUTCOME_VERDICT[first.outcome], detail[:300], cases)
        caught = sum(1 for c in cases if not c.good)
        return cls(check, via, "ok", f"caught {caught} bad input(s), passed the good", cases)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckVerdict:
        cases = tuple(CaseResult(**c) for c in data.get("cases", ()))
        fields = {k: data[k] for k in ("check", "via", "verdict", "detail", "counts")}
        return cls(**fields, cases=cases)


@dataclass(frozen=True)
class Report:
    node: str
    at: float  # time.time() at the start
    duration_s: float
    via: tuple[str, ...]
    checks: tuple[CheckVerdict, ...] = ()
    problems: tuple[str, ...] = ()  # a path that could not run at all (agent unavailable)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems and all(v.ok for v in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def per_check(self) -> dict[str, bool]:
        """check -> selftest ok on every path it ran (waived no-canary checks left out)."""
        out: dict[str, bool] = {}
        for v in self.checks:
            if v.counts:
                out[v.check] = out.get(v.check, True) and v.verdict == "ok" and not self.problems
        return out

    def counts(self) -> dict[str, int]:
        """verdict -> how many checks got it (worst over the paths)."""
        worst: dict[str, str] = {}
        for v in self.checks:
            old = worst.get(v.check)
            if old is None or _RANK[v.verdict] < _RANK[old]:
                worst[v.check] = v.verdict
        return {name: sum(1 for w in worst.values() if w == name) for name in VERDICTS}

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "at": self.at,
            "duration_s": round(self.duration_s, 3),
            "via": list(self.via),
            "counts": self.counts(),
            "problems": list(self.problems),
            "notes": list(self.notes),
            "checks": [asdict(v) for v in self.checks],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        return cls(
            node=str(data["node"]),
            at=float(data["at"]),
            duration_s=float(data["duration_s"]),
            via=tuple(data["via"]),
            checks=tuple(CheckVerdict.from_dict(c) for c in data["checks"]),
            problems=tuple(data.get("problems", ())),
            notes=tuple(data.get("notes", ())),
        )


def merge(reports: Iterable[Report]) -> Report:
    """Several paths' reports as one (the in-process run and the agent's)."""
    parts = list(reports)
    first = parts[0]
    return Report(
        node=first.node,
        at=min(p.at for p in parts),
        duration_s=sum(p.duration_s for p in parts),
        via=tuple(v for p in parts for v in p.via),
        checks=tuple(v for p in parts for v in p.checks),
        problems=tuple(x for p in parts for x in p.problems),
        notes=tuple(x for p in parts for x in p.notes),
    )


def dumps(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2)


def lines(report: Report) -> list[object]:
    """The human report: a table, problems first, then one line of summary."""
    from nodecheck.entry.tables import table

    rows = sorted(report.checks, key=lambda v: (v.ok, _RANK[v.verdict], v.check, v.via))
    shown = [(v.check, v.via, _label(v), v.verdict, v.detail) for v in rows]
    out: list[object] = [f"selftest of node {report.node}: each check on its canaries"]
    headers = ("CHECK", "VIA", "RESULT", "VERDICT", "DETAIL")
    out.append(table(headers, shown, status_column=2, whole=(0, 3)))
    out.append("")
    out.extend(f"problem: {p}" for p in report.problems)
    out.extend(f"note: {n}" for n in report.notes)
    counts = report.counts()
    summary = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    word = "OK" if report.ok else "FAILED"
    via = " + ".join(report.via) or "-"
    out.append(f"selftest {word}: {summary} (via {via}, {report.duration_s:.1f}s)")
    return out


def _label(v: CheckVerdict) -> str:
    """The verdict as a run status, for the table's colours: ok PASS, a waived no-canary
    SKIP, an error ERROR, every other failure FAIL."""
    if v.verdict == "ok":
        return "PASS"
    if v.verdict == "no-canary" and not v.counts:
        return "SKIP"
    return "ERROR" if v.verdict == "error" else "FAIL"
