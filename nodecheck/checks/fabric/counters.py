"""ib.counters: port error counters rising faster than their thresholds between runs.

The probe (`nodecheck.probes.fabric.counters`) says how each counter moved within the
window; the thresholds and every verdict are here."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nodecheck.checks.context import CheckContext
from nodecheck.checks.fabric.common import _port_name, _present_ports, sysfs
from nodecheck.checks.registry import Option, check
from nodecheck.core.progress import note
from nodecheck.core.results import CheckResult, Status
from nodecheck.probes.fabric import counters as counter_probe

# A rise strictly greater than the threshold within one window gives the verdict.
# Counters not named in a table are recorded (values) but never judged on that level.
DEFAULT_FAIL_RISE = {
    "symbol_error": 100,
    "link_error_recovery": 10,
    "link_downed": 2,
    "port_rcv_errors": 100,
    "local_link_integrity_errors": 5,
    "excessive_buffer_overrun_errors": 5,
    "rx_icrc_encapsulated": 100,
}
DEFAULT_WARN_RISE = {
    "symbol_error": 10,
    "link_error_recovery": 0,
    "link_downed": 0,
    "port_rcv_errors": 10,
    "port_rcv_remote_physical_errors": 100,
    "port_xmit_discards": 1000,
    "local_link_integrity_errors": 0,
    "excessive_buffer_overrun_errors": 0,
    "rx_icrc_encapsulated": 10,
    "local_ack_timeout_err": 1000,
}

STATE_VERSION = 1
MAX_JOB_READINGS = 64
JOB_READING_MAX_AGE_S = 30 * 86400


@check(
    "ib.counters",
    summary="HCA port error counters not rising past thresholds between runs (prolog->epilog)",
    timeout_s=8.0,
    group="fabric",
    severity="medium",
    remedy="check-cable",
    options={
        "ports": Option(list, [], "ports to watch as device/port (empty: all present)", item=str),
        "counters": Option(
            list, counter_probe.DEFAULT_COUNTERS, "counters/* files to watch", item=str
        ),
        "hw_counters": Option(
            list,
            counter_probe.DEFAULT_HW_COUNTERS,
            "hw_counters/* files to watch where present",
            item=str,
        ),
        "fail_rise": Option(
            dict,
            DEFAULT_FAIL_RISE,
            "counter -> rise within one window above which FAIL",
            item=int,
            low=0,
        ),
        "warn_rise": Option(
            dict,
            DEFAULT_WARN_RISE,
            "counter -> rise within one window above which WARN",
            item=int,
            low=0,
        ),
        "max_window_s": Option(
            (int, float), 86400, "a run window older than this is only a new baseline", low=1
        ),
    },
)
def ib_counters(ctx: CheckContext) -> Iterator[CheckResult]:
    """Link errors that pile up during a job (symbol errors, link recoveries, link downs)
    mean a marginal cable, transceiver or port: collectives slow down or fail. Fix: check
    the link with `mlxlink -m -c` / the switch side, replace the cable, clear the counters
    (`perfquery -x -R`) and resume."""
    opts = ctx.options
    root = ctx.settings.sysfs_root
    if opts["ports"]:
        bad = [name for name in opts["ports"] if _port_name(name) is None]
        if bad:
            msg = f"option ports: {', '.join(bad)} not of the form device/port (mlx5_0/1)"
            yield CheckResult("ib.counters", Status.ERROR, msg)
            return
        ports = [_port_name(name) for name in opts["ports"]]
    else:
        ports = _present_ports(root)
    readings: dict[str, dict[str, Any]] = {}
    guids: dict[str, str | None] = {}
    for dev, port in ports:  # type: ignore[misc]
        path = sysfs.ib_class_dir(root) / dev / "ports" / str(port)
        if not path.is_dir():
            continue  # a missing port is ib.port's verdict
        name = f"{dev}/{port}"
        note(f"reading {name} counters")
        got: dict[str, Any] = sysfs.read_port_counters(path, list(opts["counters"]), "counters")
        hw = sysfs.read_port_counters(path, list(opts["hw_counters"]), "hw_counters")
        got.update({k: v for k, v in hw.items() if k not in got})
        readings[name] = got
        guid = sysfs.read_attr(sysfs.ib_class_dir(root) / dev / "node_guid")
        guids[name] = guid if isinstance(guid, str) else None
    if not readings:
        yield CheckResult("ib.counters", Status.SKIP, "no HCA ports present")
        return
    boot_id = _boot_id(ctx)
    now = time.time()
    note("updating counter state")
    try:
        results = _judge_and_store(ctx, readings, guids, boot_id, now)
    except Exception as exc:  # state unusable: still report what the reads showed
        msg = f"counter state unavailable ({type(exc).__name__}: {exc}); nothing compared"
        yield CheckResult("ib.counters", Status.ERROR, msg[:240], component="state")
        results = []
        for name, reading in readings.items():
            judged = judge_port(reading, None, {}, {})
            results.append(
                _counter_result(name, judged, "baseline", None, ctx, 0.0, "not compared")
            )
    yield from results


@dataclass(frozen=True)
class PortJudgement(counter_probe.PortWindow):
    """One port's counter window with the verdict on it."""

    status: Status
    flagged: list[tuple[Status, str, int]]  # (verdict, counter, rise), worst first


def judge_port(
    current: dict[str, Any],
    previous: dict[str, int] | None,
    fail_rise: dict[str, int],
    warn_rise: dict[str, int],
) -> PortJudgement:
    """Judge one port's counters against an earlier reading (None: no window, baseline).

    Access errors (EACCES/EPERM) are ERROR, other read errors FAIL, values that do not parse
    ERROR (a format we do not understand is our problem), a saturated counter WARN. Counters
    the device does not have (absent, or no PMA) are no verdict; when that is all of them,
    the port is SKIP: nothing to judge, on every run, and no fault of the node."""
    window = counter_probe.compare_port(current, previous)
    # Shallow on purpose: asdict() would deep-copy and turn the ReadFailures into dicts.
    read = {f.name: getattr(window, f.name) for f in dataclasses.fields(window)}
    if window.none_present:
        return PortJudgement(**read, status=Status.SKIP, flagged=[])
    seen = [Status.PASS]
    seen += [Status.ERROR if f.access else Status.FAIL for f in window.unreadable.values()]
    if window.unparsable:
        seen.append(Status.ERROR)
    if window.saturated:
        seen.append(Status.WARN)
    flagged = []
    for name, rise in window.rises.items():
        if name in fail_rise and rise > fail_rise[name]:
            flagged.append((Status.FAIL, name, rise))
        elif name in warn_rise and rise > warn_rise[name]:
            flagged.append((Status.WARN, name, rise))
    flagged.sort(key=lambda item: (-item[0], -item[2], item[1]))
    status = max([*seen, *(verdict for verdict, _, _ in flagged)])
    return PortJudgement(**read, status=status, flagged=flagged)


def describe_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _boot_id(ctx: CheckContext) -> str | None:
    raw = sysfs.read_attr(ctx.proc_path("sys", "kernel", "random", "boot_id"))
    return raw if isinstance(raw, str) and raw else None


# Waiting for the state lock must end well inside the group's deadline: a state file held
# by someone else is nodecheck's problem (ERROR), never a "probe hung" FAIL of the fabric.
STATE_BUSY_MS = 3000


def _judge_and_store(
    ctx: CheckContext,
    readings: dict[str, dict[str, Any]],
    guids: dict[str, str | None],
    boot_id: str | None,
    now: float,
) -> list[CheckResult]:
    opts = ctx.options
    key = f"ib.counters/{ctx.node}"
    job_id = ctx.job.job_id
    results = []
    from nodecheck.store.transaction import locked_update

    with locked_update(ctx.settings.state_dir, STATE_BUSY_MS) as store:
        blob = store.get_json(key) or {}
        if blob.get("v") != STATE_VERSION:
            blob = {"v": STATE_VERSION, "ports": {}, "jobs": {}}
        job_reading = None
        if ctx.phase == "epilog" and job_id:
            job_reading = blob["jobs"].pop(job_id, None)
        new_entries = {}
        for name, reading in readings.items():
            window, previous, since, why = _pick_window(
                blob, job_reading, name, guids[name], boot_id, now, opts["max_window_s"]
            )
            judged = judge_port(reading, previous, dict(opts["fail_rise"]), dict(opts["warn_rise"]))
            entry = {"t": now, "boot": boot_id, "guid": guids[name], "c": judged.stored}
            new_entries[name] = entry
            blob["ports"][name] = entry
            results.append(_counter_result(name, judged, window, since, ctx, now, why))
        if ctx.phase == "prolog" and job_id:
            blob["jobs"][job_id] = {"t": now, "boot": boot_id, "ports": new_entries}
        _prune_jobs(blob["jobs"], now)
        # A manual run compares against the window but leaves it where the hooks put it:
        # the next prolog must still see the rise an admin just looked at.
        if ctx.keeps_state:
            store.put_json(key, blob)
    return results


def _pick_window(
    blob: dict[str, Any],
    job_reading: dict[str, Any] | None,
    name: str,
    guid: str | None,
    boot_id: str | None,
    now: float,
    max_window_s: float,
) -> tuple[str, dict[str, int] | None, float | None, str]:
    """(window kind, previous counters or None, previous time, why a baseline)."""
    candidates = []
    if job_reading is not None and name in job_reading.get("ports", {}):
        candidates.append(("job", job_reading["ports"][name]))
    if name in blob["ports"]:
        candidates.append(("run", blob["ports"][name]))
    if not candidates:
        return "baseline", None, None, "baseline recorded"
    kind, prev = candidates[0]
    if prev.get("guid") and guid and prev["guid"] != guid:
        return "baseline", None, prev.get("t"), f"HCA changed (GUID {guid}), new baseline"
    if prev.get("boot") and boot_id and prev["boot"] != boot_id:
        return "baseline", None, prev.get("t"), "node rebooted since last reading, new baseline"
    age = now - float(prev.get("t", now))
    if kind == "run" and age > max_window_s:
        why = f"last reading {describe_age(age)} old, new baseline"
        return "baseline", None, prev.get("t"), why
    return kind, dict(prev.get("c", {})), prev.get("t"), ""


def _prune_jobs(jobs: dict[str, Any], now: float) -> None:
    """Drop prolog readings whose epilog never came (node crashed, nodecheck disabled)."""
    for job in [j for j, r in jobs.items() if now - float(r.get("t", 0)) > JOB_READING_MAX_AGE_S]:
        del jobs[job]
    if len(jobs) > MAX_JOB_READINGS:
        for job in sorted(jobs, key=lambda j: float(jobs[j].get("t", 0)))[:-MAX_JOB_READINGS]:
            del jobs[job]


def _counter_result(
    name: str,
    judged: PortJudgement,
    window: str,
    since: float | None,
    ctx: CheckContext,
    now: float,
    why: str,
) -> CheckResult:
    if window == "job":
        span = f"during job {ctx.job.job_id}"
    elif since is not None:
        span = f"since last check {describe_age(max(0.0, now - since))} ago"
    else:
        span = ""
    parts = []
    if judged.status is Status.SKIP:
        # Every watched counter absent or without a PMA: say so, not "baseline recorded".
        if judged.unavailable:
            how = str(next(iter(judged.unavailable.values())))
            parts.append(f"counters unavailable ({how}: the device has no PMA)")
        else:
            parts.append("counters unavailable (no counters/ or hw_counters/ files to read)")
        why = ""
    if judged.unreadable:
        items = [f"{k} ({v})" for k, v in judged.unreadable.items()]
        parts.append("unreadable: " + ", ".join(items[:2]) + (" ..." if len(items) > 2 else ""))
    if judged.unparsable:
        items = [f"{k}={v[:20]!r}" for k, v in judged.unparsable.items()]
        parts.append("not understood: " + ", ".join(items[:2]))
    if judged.flagged:
        rises = ", ".join(f"{k} +{rise}" for _, k, rise in judged.flagged[:4])
        parts.append(f"{rises} {span}".strip())
    if judged.saturated:
        parts.append(f"{', '.join(judged.saturated)} saturated (clear counters to see new errors)")
    if judged.reset:
        parts.append(f"counter reset ({', '.join(judged.reset[:3])}), new baseline")
    if why:
        parts.append(why)
    if not parts:
        parts.append(f"no rise above thresholds {span}".strip())
    values: dict[str, Any] = {
        "window": window,
        "counters": judged.stored,
        "rise": {k: v for k, v in judged.rises.items() if v},
    }
    if since is not None and window != "baseline":
        values["window_s"] = round(now - since, 1)
    for label in ("reset", "saturated", "absent"):
        if getattr(judged, label):
            values[label] = getattr(judged, label)
    if judged.unreadable:
        values["unreadable"] = {k: str(v) for k, v in judged.unreadable.items()}
    if judged.unavailable:
        values["unavailable"] = {k: str(v) for k, v in judged.unavailable.items()}
    severity, remedy = ("high", "reboot") if judged.unreadable else ("", "")
    return CheckResult(
        "ib.counters", judged.status, "; ".join(parts)[:200], component=name, values=values,
        severity=severity, remedy=remedy,
    )  # fmt: skip
