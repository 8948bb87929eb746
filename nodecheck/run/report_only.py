"""Report-only: a check new to a platform reports, it does not drain (DESIGN.md: "A check new
to a platform ships report-only (WARN + metric, no drain) until a site enables it").

The one place this is decided, a pure step between the checks and the verdict
(run/decide.py): the run's pipeline passes every result through `report_only` after
hysteresis, in-process and through the agent, for the hooks, manual runs and the selftest.
A check declares the signals new to a platform (`@check(new_signals=...)`) and marks each
FAIL with the signals it rests on (values["signals"], results.SIGNALS_KEY); the site's
`report_only` per check (config, node class first) says which of them may drain.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from nodecheck.core.results import SIGNALS_KEY, CheckResult, Status

REPORT_ONLY_KEY = "report_only"  # in a demoted result's values; counted by the metrics


@dataclass(frozen=True)
class ReportOnly:
    """One check's report-only rule: its declared new signals (registry `new_signals`) as
    the site's `report_only` setting leaves them. `every`: every FAIL of the check is only
    reported; `signals`: a FAIL resting only on these (its values' "signals") is."""

    every: bool = False
    signals: frozenset[str] = frozenset()

    @classmethod
    def resolve(
        cls, setting: bool | Collection[str] | None, new_signals: Iterable[str]
    ) -> ReportOnly:
        """None (not set): the check's new signals; True: all; False: none (the site
        enabled the check); a list: exactly those signals."""
        if setting is True:
            return cls(every=True)
        if setting is False:
            return cls()
        return cls(signals=frozenset(new_signals if setting is None else setting))

    def holds(self, result: CheckResult) -> bool:
        if self.every:
            return True
        signals = result.values.get(SIGNALS_KEY) or ()
        return bool(signals) and set(signals) <= self.signals


def report_only(results: list[CheckResult], rules: Mapping[str, ReportOnly]) -> list[CheckResult]:
    """FAILs a report-only rule holds become WARN, marked (values["report_only"]) for the
    metrics and named as such: they never drain, whatever path (hysteresis included)
    made them FAIL. The one place this is decided: every run's results pass here."""
    out = []
    for r in results:
        rule = rules.get(r.check_id)
        if r.status is Status.FAIL and rule is not None and rule.holds(r):
            r = replace(
                r,
                status=Status.WARN,
                message=f"report-only: {r.message}",
                values={**r.values, REPORT_ONLY_KEY: True},
            )
        out.append(r)
    return out
