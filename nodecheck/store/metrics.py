"""Prometheus metrics for node_exporter's textfile collector.

After every hook run nodecheck rewrites one file (`metrics_file`, "" disables) from what
the history keeps: the last status and duration of each check, the last run of each phase,
drain/resume counters and whether the node is drained by nodecheck now. The text comes
from prometheus_client's own exposition code (a private registry and `generate_latest`),
and the file is replaced atomically (temp file in the same dir, 0644, rename), so the
collector never reads half a file.

prometheus_client is imported lazily, only here; if it is missing, metrics are skipped
with a log line. Every series carries a `node` label, so several slurmd on one host
(`metrics_file` with {node}) do not clash in node_exporter.

Metric names:
  nodecheck_check_status{node,check,status}           1 for the check's last status, 0 else
  nodecheck_check_duration_seconds{node,check}        duration of the check's last run
  nodecheck_check_last_run_timestamp_seconds{node,check}
  nodecheck_run_duration_seconds{node,phase}          duration of the phase's last run
  nodecheck_last_run_timestamp_seconds{node,phase}
  nodecheck_run_status{node,phase,status}             1 for the phase's last verdict status
  nodecheck_drains_total{node}                        drain episodes started by nodecheck
  nodecheck_resumes_total{node}                       resumes by nodecheck
  nodecheck_flap_holds_total{node}                    drains held because the node flaps
  nodecheck_breaker_trips_total{node}                 drains skipped: circuit breaker open
  nodecheck_drained{node}                             1 while nodecheck holds a drain
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

STATUSES = ("PASS", "WARN", "ERROR", "FAIL", "SKIP")


def available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class _Snapshot:
    """A prometheus_client custom collector over one snapshot of the history."""

    def __init__(
        self, node: str, last: Mapping[str, Any], counters: Mapping[str, int], drained: bool
    ) -> None:
        self.node = node
        self.last = last
        self.counters = counters
        self.drained = drained

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        node = self.node
        checks = self.last.get("checks", {})
        status = GaugeMetricFamily(
            "nodecheck_check_status",
            "Last status of each check: 1 for the status it had, 0 for the others.",
            labels=["node", "check", "status"],
        )
        duration = GaugeMetricFamily(
            "nodecheck_check_duration_seconds",
            "Duration of each check's last run.",
            labels=["node", "check"],
        )
        checked_at = GaugeMetricFamily(
            "nodecheck_check_last_run_timestamp_seconds",
            "Unix time of each check's last run.",
            labels=["node", "check"],
        )
        for cid in sorted(checks):
            entry = checks[cid]
            for name in STATUSES:
                status.add_metric([node, cid, name], 1.0 if entry.get("status") == name else 0.0)
            duration.add_metric([node, cid], float(entry.get("duration_s", 0.0)))
            checked_at.add_metric([node, cid], float(entry.get("at", 0.0)))
        yield from (status, duration, checked_at)

        runs = self.last.get("runs", {})
        run_duration = GaugeMetricFamily(
            "nodecheck_run_duration_seconds",
            "Duration of the last nodecheck run of each phase.",
            labels=["node", "phase"],
        )
        run_at = GaugeMetricFamily(
            "nodecheck_last_run_timestamp_seconds",
            "Unix time of the last nodecheck run of each phase.",
            labels=["node", "phase"],
        )
        run_status = GaugeMetricFamily(
            "nodecheck_run_status",
            "Verdict of the last run of each phase: 1 for its status, 0 for the others.",
            labels=["node", "phase", "status"],
        )
        for phase in sorted(runs):
            entry = runs[phase]
            run_duration.add_metric([node, phase], float(entry.get("duration_s", 0.0)))
            run_at.add_metric([node, phase], float(entry.get("at", 0.0)))
            for name in STATUSES:
                run_status.add_metric(
                    [node, phase, name], 1.0 if entry.get("status") == name else 0.0
                )
        yield from (run_duration, run_at, run_status)

        for key, help_text in (
            ("drains", "Drain episodes started by nodecheck on this node."),
            ("resumes", "Resumes of this node by nodecheck."),
            ("flap_holds", "Drains nodecheck kept because the node flaps."),
            ("breaker_trips", "Drains nodecheck skipped because the circuit breaker was open."),
        ):
            counter = CounterMetricFamily(f"nodecheck_{key}", help_text, labels=["node"])
            counter.add_metric([node], float(self.counters.get(key, 0)))
            yield counter
        drained = GaugeMetricFamily(
            "nodecheck_drained", "1 while the node is drained by nodecheck.", labels=["node"]
        )
        drained.add_metric([node], 1.0 if self.drained else 0.0)
        yield drained


def render(node: str, last: Mapping[str, Any], counters: Mapping[str, int], drained: bool) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(node, last, counters, drained))
    return generate_latest(registry)


def write_textfile(path: Path, data: bytes) -> None:
    """Atomically replace `path`: temp file in the same directory, 0644, rename (no fsync:
    the next run rewrites it anyway)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
