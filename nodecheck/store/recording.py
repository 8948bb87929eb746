"""A run recorded: its history row (store/history.py) and the node's metrics file
(store/metrics.py) rewritten from the same snapshot of the state, in one transaction; and the
two rewrites of the metrics file that write no row (under the killswitch, and while a run's
state waits unsaved).

This module joins the two below it, so that neither imports the other. Which checks are
enabled for the node (only those are exported) needs the check registry, a layer above the
store: the caller passes `checks` (nodecheck.checks.registry.all_checks, the function). It
is called only when the file is rewritten, so a run that leaves the file alone never loads
the registry, and a registry that cannot load exports every check (metrics.node_flags).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nodecheck.core.plan import HeldBack
from nodecheck.log import get_logger
from nodecheck.store import history, metrics
from nodecheck.store.history import BREAKER_HOLD, History, RunRecord, drain_reason

CheckRegistry = Callable[[], Mapping[str, Any]]


def record_run(
    config: Any,
    node: str,
    rec: RunRecord,
    changes: Callable[[History], None] | None = None,
    checks: CheckRegistry | None = None,
) -> None:
    """Add the run to the history, apply the run's state `changes` (marker, events, breaker
    hold: nodecheck/run/record.py) and rewrite the metrics file from the same snapshot, in
    one IMMEDIATE transaction (so concurrent runs leave the newest numbers in the file).
    `checks`: the check registry's loader; None exports every check the history has."""
    metrics_file = config.metrics_file_for(node)
    export = False
    if metrics_file is not None and metrics_due(config.values, rec):
        export = metrics.available()
        if not export:
            get_logger().warning(
                "metrics_skipped", why="prometheus_client not installed", file=str(metrics_file)
            )

    def work(h: History) -> None:
        with h.write():
            if changes is not None:
                changes(h)
            h.add_run(rec, history.retention_for(config.values))
            if not export:
                return
            flags = metrics.node_flags(config, node, checks)
            data = metrics.render(node, h.last(), h.counters(), drain_reason(h), flags)
            held = HeldBack.from_json(h.store.get_json(BREAKER_HOLD))
            data += metrics.render_breaker_hold(node, held.since if held else None)
            data += metrics.render_state_unsaved(node, None)  # this write went through
            try:
                metrics.write_textfile(metrics_file, data)
            except OSError as exc:
                get_logger().warning("metrics_not_written", file=str(metrics_file), error=str(exc))

    history.with_history(config.state_dir_for(node), work)


def metrics_due(values: Mapping[str, Any], rec: RunRecord) -> bool:
    """Rewrite the metrics file on this run? Always in health runs and whenever a
    prolog/epilog found a problem or acted; a healthy prolog/epilog leaves it to the next
    health run (its row is in the history) unless metrics_on_job_path is set, so that
    prometheus_client stays off the job-start path."""
    if rec.phase not in ("prolog", "epilog") or values.get("metrics_on_job_path", False):
        return True
    return rec.status not in ("PASS", "SKIP") or rec.action != "none"


def rewrite_while_disabled(config: Any, node: str, checks: CheckRegistry | None = None) -> None:
    """The health run under the killswitch records no run, but the file must say the
    node is switched off (nodecheck_disabled 1) rather than keep its last word."""
    path = config.metrics_file_for(node)
    if path is None or not metrics.available():
        return
    snapshot = history.read_only_history(
        config.state_dir_for(node), lambda h: (h.last(), h.counters(), drain_reason(h))
    )
    last, counters, reason = snapshot or ({}, {}, None)
    flags = metrics.node_flags(config, node, checks, disabled=True)
    metrics.write_textfile(path, metrics.render(node, last, counters, reason, flags))


def rewrite_state_unsaved(
    config: Any, node: str, since: float, checks: CheckRegistry | None = None
) -> None:
    """The run could not write its state: the metrics file still says what the state
    shows (read only), and that something waits unsaved since `since`."""
    path = config.metrics_file_for(node)
    if path is None or not metrics.available():
        return
    snapshot = history.read_only_history(
        config.state_dir_for(node),
        lambda h: (h.last(), h.counters(), drain_reason(h), h.store.get_json(BREAKER_HOLD)),
    )
    last, counters, reason, held = snapshot or ({}, {}, None, None)
    flags = metrics.node_flags(config, node, checks)
    data = metrics.render(node, last, counters, reason, flags)
    held_since = held.get("since") if isinstance(held, dict) else None
    data += metrics.render_breaker_hold(node, float(held_since) if held_since else None)
    metrics.write_textfile(path, data + metrics.render_state_unsaved(node, since))
