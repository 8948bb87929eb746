"""Prometheus metrics for node_exporter's textfile collector.

nodecheck rewrites one file (`metrics_file`, "" disables) from what the history keeps: the
last status and duration of each check, the last run of each phase, drain/resume counters,
which check holds a drain of the node, and whether dry-run or the killswitch is on. It is
rewritten by every health run (HealthCheckInterval), by every manual `nodecheck run`, and
by a prolog or epilog that found a problem or acted; a healthy prolog or epilog leaves it
to the next of those (`metrics_on_job_path = true` rewrites it at every run). Under the
killswitch no run records anything, so the health run rewrites the file alone, with
`nodecheck_disabled` 1 (nodecheck.entry.hook).

Only checks that are enabled for this node in some phase are exported: a check that was
disabled, or that an upgrade removed, loses its series at the next rewrite instead of
keeping its last status (and an alert firing) forever.

The text comes from prometheus_client's own exposition code (a private registry and
`generate_latest`), and the file is replaced atomically (temp file in the same dir, 0644,
rename), so the collector never reads half a file. prometheus_client is imported only
here; if it is missing, metrics are skipped with a log line. Every series carries a `node`
label, so several slurmd on one host (`metrics_file` with {node}) do not clash.

Metric names:
  nodecheck_build_info{node,version,python}           1; the running nodecheck
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
  nodecheck_drained{node,check,component}             1 while nodecheck holds a drain, with
                                                      the check and component it names; 0
                                                      (labels empty) when it holds none
  nodecheck_dry_run{node}                             1 while dry-run is on for this node
  nodecheck_disabled{node}                            1 while the killswitch is on
  nodecheck_breaker_held{node}                        1 while the breaker holds the node back
  nodecheck_breaker_held_since_timestamp_seconds{node}
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodecheck import __version__
from nodecheck.run.reason import parse_reason

STATUSES = ("PASS", "WARN", "ERROR", "FAIL", "SKIP")


@dataclass(frozen=True)
class NodeFlags:
    """What the configuration says about this node now, beside the history."""

    checks: Collection[str] | None = None  # enabled checks; None: export every one
    dry_run: bool = False
    disabled: bool = False


def node_flags(config: Any, node: str, disabled: bool = False) -> NodeFlags:
    """The checks enabled for `node` in some phase, and its dry-run and killswitch state.
    A config that cannot say exports every check the history has."""
    from nodecheck.checks.registry import all_checks

    killswitch = Path(config.values.get("killswitch_file") or "/etc/nodecheck/disabled")
    try:
        nodecfg = config.for_node(node, all_checks())
    except Exception:  # metrics must never fail the run that records them
        return NodeFlags(None, bool(config.values.get("dry_run")), disabled or killswitch.exists())
    enabled = frozenset(cid for cid, s in nodecfg.checks.items() if s.enabled and s.phases)
    return NodeFlags(
        checks=enabled,
        dry_run=bool(nodecfg.dry_run),
        disabled=disabled or bool(nodecfg.disabled) or killswitch.exists(),
    )


def available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class _Snapshot:
    """A prometheus_client custom collector over one snapshot of the history."""

    def __init__(
        self,
        node: str,
        last: Mapping[str, Any],
        counters: Mapping[str, int],
        drain_reason: str | None,
        flags: NodeFlags,
    ) -> None:
        self.node = node
        self.last = last
        self.counters = counters
        self.drain_reason = drain_reason
        self.flags = flags

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        node = self.node
        build = GaugeMetricFamily(
            "nodecheck_build_info",
            "The running nodecheck: always 1, the version in its labels.",
            labels=["node", "version", "python"],
        )
        build.add_metric([node, __version__, platform.python_version()], 1.0)
        yield build
        checks = {
            cid: entry
            for cid, entry in self.last.get("checks", {}).items()
            if self.flags.checks is None or cid in self.flags.checks
        }
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
            "nodecheck_drained",
            "1 while nodecheck holds a drain of the node, labelled with the check and "
            "component its reason names.",
            labels=["node", "check", "component"],
        )
        if self.drain_reason is None:
            drained.add_metric([node, "", ""], 0.0)
        else:
            parsed = parse_reason(self.drain_reason)
            check, component = (parsed.check_id, parsed.component) if parsed else ("", "")
            drained.add_metric([node, check, component], 1.0)
        yield drained
        for name, on, help_text in (
            ("dry_run", self.flags.dry_run, "1 while dry-run is on: failures only logged."),
            ("disabled", self.flags.disabled, "1 while the killswitch turns every run off."),
        ):
            gauge = GaugeMetricFamily(f"nodecheck_{name}", help_text, labels=["node"])
            gauge.add_metric([node], 1.0 if on else 0.0)
            yield gauge


def render(
    node: str,
    last: Mapping[str, Any],
    counters: Mapping[str, int],
    drain_reason: str | None,
    flags: NodeFlags = NodeFlags(),
) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(node, last, counters, drain_reason, flags))
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


def rewrite_while_disabled(config: Any, node: str) -> None:
    """The health run under the killswitch records no run, but the file must say the
    node is switched off (nodecheck_disabled 1) rather than keep its last word."""
    from nodecheck.store import history

    path = config.metrics_file_for(node)
    if path is None or not available():
        return
    snapshot = history.read_only_history(
        config.state_dir_for(node), lambda h: (h.last(), h.counters(), history.drain_reason(h))
    )
    last, counters, reason = snapshot or ({}, {}, None)
    flags = node_flags(config, node, disabled=True)
    write_textfile(path, render(node, last, counters, reason, flags))


def render_breaker_hold(node: str, held_since: float | None) -> bytes:
    """nodecheck_breaker_held{node} (1 while the circuit breaker holds this failing node
    back from a drain) and nodecheck_breaker_held_since_timestamp_seconds{node} (0 when not
    held): appended to the file `render` makes. Summed over nodes, the first is the number
    of nodes the breaker holds back."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    held = Gauge(
        "nodecheck_breaker_held",
        "1 while the circuit breaker holds this failing node back from a drain.",
        ["node"],
        registry=registry,
    )
    since = Gauge(
        "nodecheck_breaker_held_since_timestamp_seconds",
        "Unix time the circuit breaker started holding this node back; 0 when not held.",
        ["node"],
        registry=registry,
    )
    held.labels(node).set(1.0 if held_since is not None else 0.0)
    since.labels(node).set(held_since or 0.0)
    return generate_latest(registry)
