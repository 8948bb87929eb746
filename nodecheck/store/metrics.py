"""Prometheus metrics for node_exporter's textfile collector.

nodecheck rewrites one file (`metrics_file`, "" disables) from what the history keeps: the
last status and duration of each check, the last run of each phase, drain/resume counters,
which check holds a drain of the node, and whether dry-run or the killswitch is on. It is
rewritten by every health run (HealthCheckInterval), by every manual `nodecheck run`, and
by a prolog or epilog that found a problem or acted; a healthy prolog or epilog leaves it
to the next of those (`metrics_on_job_path = true` rewrites it at every run). Under the
killswitch no run records anything, so the health run rewrites the file alone, with
`nodecheck_disabled` 1 (nodecheck.entry.hook). This module renders and writes; what is
rewritten when, from which snapshot of the history, is nodecheck/store/recording.py.

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
  nodecheck_check_report_only{node,check}             components whose FAIL the check's last
                                                      run only reported (report-only: a signal
                                                      new to the platform, or the site's
                                                      `report_only`): WARN, no drain
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
  nodecheck_state_unsaved{node}                       1 while state a run owed could not be
                                                      written (read-only or full state_dir)
                                                      and waits aside (store/unsaved.py)
  nodecheck_state_unsaved_since_timestamp_seconds{node}
  nodecheck_selftest_ok{node,check}                   1 when the check caught its bad canaries
                                                      and passed its good one at the last
                                                      selftest (docs/selftest.md), 0 else
  nodecheck_selftest_last_run_timestamp_seconds{node} when the last selftest ran
  nodecheck_selftest_duration_seconds{node}
  nodecheck_selftest_checks{node,verdict}             checks per selftest verdict

The selftest series are written by `nodecheck selftest` (and the agent's daily run) to a
side file, `<metrics_file>.selftest` (not read by the collector: it only reads *.prom), and
every rewrite of the metrics file appends that file's series: a hook's rewrite keeps the
last selftest's word, and a selftest never touches the history the rest comes from.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodecheck import __version__
from nodecheck.core.reason import parse_reason

STATUSES = ("PASS", "WARN", "ERROR", "FAIL", "SKIP")


@dataclass(frozen=True)
class NodeFlags:
    """What the configuration says about this node now, beside the history."""

    checks: Collection[str] | None = None  # enabled checks; None: export every one
    dry_run: bool = False
    disabled: bool = False


def node_flags(
    config: Any,
    node: str,
    checks: Callable[[], Mapping[str, Any]] | None = None,
    disabled: bool = False,
) -> NodeFlags:
    """The checks enabled for `node` in some phase, and its dry-run and killswitch state.
    `checks` loads the check registry (nodecheck.checks.registry.all_checks: the caller's,
    as the store sits below the checks). Without it, or when the config cannot say, every
    check the history has is exported."""
    killswitch = Path(config.values.get("killswitch_file") or "/etc/nodecheck/disabled")
    try:
        nodecfg = config.for_node(node, checks()) if checks is not None else None
    except Exception:  # metrics must never fail the run that records them
        nodecfg = None
    if nodecfg is None:
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
        held = GaugeMetricFamily(
            "nodecheck_check_report_only",
            "Components whose FAIL the check's last run only reported (report-only): WARN, "
            "no drain, until the site enables the signal.",
            labels=["node", "check"],
        )
        for cid in sorted(checks):
            entry = checks[cid]
            for name in STATUSES:
                status.add_metric([node, cid, name], 1.0 if entry.get("status") == name else 0.0)
            duration.add_metric([node, cid], float(entry.get("duration_s", 0.0)))
            checked_at.add_metric([node, cid], float(entry.get("at", 0.0)))
            held.add_metric([node, cid], float(entry.get("report_only", 0)))
        yield from (status, duration, checked_at, held)

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


def write_textfile(path: Path, data: bytes, selftest: bool = True) -> None:
    """Atomically replace `path`: temp file in the same directory, 0644, rename (no fsync:
    the next run rewrites it anyway). With `selftest`, the last selftest's series (its
    side file) are appended."""
    if selftest:
        data = without_selftest(data) + _selftest_series(path)
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


SELFTEST_PREFIX = "nodecheck_selftest_"
_MAX_SELFTEST_BYTES = 1 << 20


def selftest_file(path: Path) -> Path:
    """Where the last selftest's series wait for the next rewrite of `path`."""
    return path.with_name(path.name + ".selftest")


def _selftest_series(path: Path) -> bytes:
    """The side file's series; nothing when there is none (or it cannot be read: the rest of
    the file is worth more than them)."""
    data = _read_own(selftest_file(path))
    return data if data.endswith(b"\n") else b""


def _read_own(path: Path) -> bytes:
    """A file nodecheck wrote, read as root: the metrics directory may be one a user can
    write to, and a symlink, FIFO or file planted there must not be read into the
    world-readable metrics file. Only a regular file of this uid that others cannot
    write, opened without following a link; else nothing (and a log line)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    except OSError as exc:  # ELOOP: a symbolic link
        _refused(path, exc.strerror or str(exc))
        return b""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            _refused(path, f"not a regular file of uid {os.geteuid()} that only it may write")
            return b""
        if st.st_nlink > 1:  # a hard link planted to a root-only file (protected_hardlinks=0)
            _refused(path, f"{st.st_nlink} hard links to it")
            return b""
        if st.st_size > _MAX_SELFTEST_BYTES:
            _refused(path, f"{st.st_size} bytes, more than a metrics file has")
            return b""
        return os.read(fd, _MAX_SELFTEST_BYTES)
    except OSError as exc:
        _refused(path, exc.strerror or str(exc))
        return b""
    finally:
        os.close(fd)


def _refused(path: Path, why: str) -> None:
    from nodecheck.log import get_logger

    get_logger().warning("metrics_side_file_refused", file=str(path), why=why)


def without_selftest(data: bytes) -> bytes:
    """The exposition text without the selftest's families (HELP, TYPE and samples)."""
    kept = []
    for line in data.splitlines(keepends=True):
        words = line.split(None, 3)
        name = words[2] if line.startswith(b"#") and len(words) > 2 else line
        if not name.startswith(SELFTEST_PREFIX.encode()):
            kept.append(line)
    return b"".join(kept)


def render_selftest(
    node: str, ok: Mapping[str, bool], verdicts: Mapping[str, int], at: float, duration_s: float
) -> bytes:
    """The selftest's series: per check ok (1/0), when it ran, how long, verdict counts."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    passed = Gauge(
        "nodecheck_selftest_ok",
        "1 when the check caught its bad canaries and passed its good one at the last "
        "selftest, 0 when it missed, fired on the good one or errored.",
        ["node", "check"],
        registry=registry,
    )
    for check, good in sorted(ok.items()):
        passed.labels(node, check).set(1.0 if good else 0.0)
    Gauge(
        "nodecheck_selftest_last_run_timestamp_seconds",
        "Unix time the last selftest started.",
        ["node"],
        registry=registry,
    ).labels(node).set(at)
    Gauge(
        "nodecheck_selftest_duration_seconds",
        "Duration of the last selftest.",
        ["node"],
        registry=registry,
    ).labels(node).set(duration_s)
    counted = Gauge(
        "nodecheck_selftest_checks",
        "Checks per verdict at the last selftest (ok, missed-bad, fired-on-good, error, "
        "no-canary).",
        ["node", "verdict"],
        registry=registry,
    )
    for verdict, count in sorted(verdicts.items()):
        counted.labels(node, verdict).set(float(count))
    return generate_latest(registry)


def write_selftest(path: Path, data: bytes) -> None:
    """The selftest's series into the side file, then into the metrics file itself (its
    other series as the last run wrote them)."""
    write_textfile(selftest_file(path), data, selftest=False)
    write_textfile(path, _read_own(path))


def render_state_unsaved(node: str, since: float | None) -> bytes:
    """nodecheck_state_unsaved{node} (1 while state a run owed, e.g. the record of its
    drain, could not be written to the state directory and waits aside:
    nodecheck/store/unsaved.py) and nodecheck_state_unsaved_since_timestamp_seconds{node}
    (0 when nothing waits). Alert on the first: nodecheck cannot resume such a drain by
    itself until the state directory is writable again."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    Gauge(
        "nodecheck_state_unsaved",
        "1 while state a run owed could not be written to the state directory (read-only "
        "or full) and waits aside; see the state_not_saved log line.",
        ["node"],
        registry=registry,
    ).labels(node).set(1.0 if since is not None else 0.0)
    Gauge(
        "nodecheck_state_unsaved_since_timestamp_seconds",
        "Unix time state first could not be written; 0 when nothing waits.",
        ["node"],
        registry=registry,
    ).labels(node).set(since or 0.0)
    return generate_latest(registry)
