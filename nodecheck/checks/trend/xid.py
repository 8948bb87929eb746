"""trend.gpu_xid: the Xids NVIDIA's catalogue resolves as "restart the application" (13, 31,
43, 45 ...) recurring on one GPU under jobs of different users (the GPU) versus one user's
jobs (that user's code: never a drain).

Who ran the job is Slurm's word: the epilog's SLURM_JOB_USER, set by slurmd (JobInfo);
nothing a job's processes can write. An Xid read in a run with no job (health) has no user
and is only counted, never attributed. On a node shared by several jobs at once the epilog
of one may read another's Xid: `min_users` asks for several distinct users, not one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Option
from nodecheck.checks.trend import common
from nodecheck.checks.trend.rates import HOUR
from nodecheck.core.results import CheckResult, Status
from nodecheck.store import series as store_series
from nodecheck.store.series import Reading

CURSOR_KEY = "trend.gpu_xid.cursor"
SERIES = "gpu.xid.app"
# NVIDIA's Xid catalogue: resolution RESTART_APP (13 Graphics Engine Exception, 31 GPU
# memory page fault), 43 (GPU stopped processing: IGNORE) and 45 (preemptive cleanup after
# an earlier error): each can be an application's bug, each can be a failing GPU.
APP_XIDS = [13, 31, 43, 45]


@common.trend_check(
    "trend.gpu_xid",
    summary="application-class Xids (13, 31, 43, 45) recurring on one GPU across users",
    options={
        "kmsg": Option(str, "/dev/kmsg", "kernel log: /dev/kmsg, or a saved log"),
        "xids": Option(
            list, APP_XIDS, "Xids counted (those NVIDIA may blame on the app)", item=int
        ),
        "window_h": Option((int, float), 168.0, "hours the users are counted over", low=1),
        "warn_users": Option(int, 2, "distinct users with the Xid on one GPU that WARN", low=2),
        "fail_users": Option(int, 3, "distinct users with the Xid on one GPU that FAIL", low=2),
    },
    timeout_s=5.0,
)
def trend_gpu_xid(ctx: CheckContext) -> Iterator[CheckResult]:
    """An Xid 13 or 31 under one user's jobs is that user's code (an illegal address, a
    kernel that faults): draining the node would only move the bug. The same Xid on the
    same GPU under three different users' jobs within a week is the GPU. The Xids are
    read from the kernel log with a cursor of this check's own (gpu.xid keeps its own),
    each attributed to the user of the job whose epilog read it. Fix: drain after the
    jobs and validate; RMA when it recurs."""
    cid = "trend.gpu_xid"
    opts = ctx.options
    from nodecheck.checks.gpu.xid import _component, gpu_indices
    from nodecheck.probes.kernlog import read_kernel_log
    from nodecheck.probes.xid_lines import XID_MARKS, collect
    from nodecheck.store.transaction import locked_update

    path = Path(opts["kmsg"])
    try:
        log = read_kernel_log(path, keep=XID_MARKS)
    except OSError as exc:
        yield CheckResult(cid, Status.ERROR, f"cannot read {path}: {exc.strerror or exc}")
        return
    now = time.time()
    boot = common.boot_id(ctx)
    wanted = set(opts["xids"])
    user = ctx.job.user or ""
    where = {"boot_id": boot, "source": str(path), "kind": log.kind}
    indices = gpu_indices(ctx)
    keep = float(opts["window_h"]) * HOUR + HOUR
    try:
        with locked_update(ctx.settings.state_dir, store_series.BUSY_MS) as state:
            cursor = state.get_json(CURSOR_KEY) or {}
            same = all(cursor.get(key) == value for key, value in where.items())
            after = int(cursor.get("pos", -1)) if same else -1
            events, _ = collect(log.records, after)
            new: dict[str, list[Reading]] = {}
            for event in events:
                if event.source == "xid" and event.code in wanted:
                    component = _component(event, indices)
                    new.setdefault(component, []).append(
                        Reading(now, float(event.code), boot, user)
                    )
            conn = state.conn
            store_series.ensure_schema(conn)
            got: dict[str, tuple[Reading, ...]] = {}
            for component in set(new) | set(store_series.components(conn, SERIES)):
                past = store_series.read(conn, SERIES, component, now - keep)
                got[component] = past + tuple(new.get(component, ()))
            if ctx.keeps_state:
                for component, readings in new.items():
                    for reading in readings:
                        store_series.append(conn, SERIES, component, reading)
                    store_series.prune(conn, SERIES, component, now, keep)
                end = max(log.positions, default=after)
                state.put_json(CURSOR_KEY, {**where, "pos": max(end, after)})
    except Exception as exc:  # the state file's failure is ours, not the hardware's
        yield common.state_error(cid, exc)
        return
    since = now - float(opts["window_h"]) * HOUR
    results = [
        _judge(cid, component, [r for r in readings if r.at >= since], opts)
        for component, readings in sorted(got.items())
    ]
    results = [r for r in results if r is not None]
    if not results:
        yield CheckResult(cid, Status.PASS, f"no Xid {', '.join(map(str, sorted(wanted)))} seen")
    yield from results


def _judge(
    cid: str, component: str, readings: list[Reading], opts: Mapping[str, Any]
) -> CheckResult | None:
    if not readings:
        return None
    by_xid: dict[int, dict[str, int]] = {}
    for reading in readings:
        users = by_xid.setdefault(int(reading.value), {})
        users[reading.tag] = users.get(reading.tag, 0) + 1
    worst: tuple[str, int, dict[str, int]] | None = None
    order = {"fail": 2, "warn": 1, "ok": 0}
    for code, users in sorted(by_xid.items()):
        named = {u: n for u, n in users.items() if u}
        level = "ok"
        if len(named) >= opts["fail_users"]:
            level = "fail"
        elif len(named) >= opts["warn_users"]:
            level = "warn"
        if worst is None or order[level] > order[worst[0]]:
            worst = (level, code, users)
    assert worst is not None
    level, code, users = worst
    named = sorted(u for u in users if u)
    count = sum(users.values())
    window = f"{float(opts['window_h']):g} h"
    if level == "ok":
        who = f"all under {named[0]}'s jobs: that user's code" if named else "no job's user known"
        text = f"Xid {code} x{count} in {window}, {who}"
    else:
        text = f"Xid {code} x{count} in {window} under {len(named)} users' jobs: the GPU"
    values = {"xid": code, "count": count, "users": len(named)}
    return common.result(cid, level, text, component, values, opts)
