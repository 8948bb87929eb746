import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from helpers import HANG_S, dies, hangs, make_check, make_ctx, raises

from nodecheck.core.results import CheckResult, Status
from nodecheck.run.runner import Planned, run_checks


def plan(check, timeout=None):
    return Planned(check, make_ctx(), timeout or check.timeout_s)


def passing(ctx):
    yield CheckResult("t.pass", Status.PASS, "fine", component="gpu0")


def hung_after(result: CheckResult) -> float:
    """The seconds a 'probe hung after Xs in ...' message reports (the runner's account)."""
    return float(result.message.split("after ", 1)[1].split("s", 1)[0])


def eats_memory(ctx):
    hog = bytearray(2 * 1024**3)  # above the 256 MB limit set below
    yield CheckResult("t.mem", Status.PASS, f"got {len(hog)}")


def returns_nothing(ctx):
    return []


def test_results_come_back_in_plan_order_with_duration():
    results = run_checks([plan(make_check("t.pass", passing))], budget_s=5)
    assert [(r.check_id, r.status, r.component) for r in results] == [
        ("t.pass", Status.PASS, "gpu0")
    ]
    assert results[0].duration_s >= 0


def test_hung_probe_is_fail_of_that_probe_and_run_ends_at_its_timeout():
    results = run_checks(
        [plan(make_check("t.hang", hangs), timeout=0.5), plan(make_check("t.pass", passing))],
        budget_s=10,
    )
    by_id = {r.check_id: r for r in results}
    assert by_id["t.pass"].status is Status.PASS
    assert by_id["t.hang"].status is Status.FAIL
    assert by_id["t.hang"].message.startswith("probe hung after ")
    assert by_id["t.hang"].message.endswith("s in nvmlDeviceGetRemappedRows gpu3")
    # The runner's own account: cut at the 0.5 s deadline, long before the probe's sleep.
    assert hung_after(by_id["t.hang"]) < HANG_S / 2


def test_whole_run_budget_caps_a_long_check_timeout():
    results = run_checks([plan(make_check("t.hang", hangs), timeout=60)], budget_s=0.7)
    assert results[0].status is Status.FAIL
    assert hung_after(results[0]) < 60 / 2  # the run's budget cut it, not the check's 60 s


def test_exception_in_probe_is_error_naming_it():
    [result] = run_checks([plan(make_check("t.raise", raises))], budget_s=5)
    assert result.status is Status.ERROR
    assert "ValueError" in result.message and "bad parse" in result.message


def test_probe_killed_by_signal_is_error():
    [result] = run_checks([plan(make_check("t.die", dies))], budget_s=5)
    assert result.status is Status.ERROR
    assert "signal 11" in result.message


def test_memory_hog_is_stopped_by_the_limit():
    [result] = run_checks([plan(make_check("t.mem", eats_memory))], budget_s=5, memory_limit_mb=256)
    assert result.status is Status.ERROR
    assert "MemoryError" in result.message


def test_check_returning_nothing_is_error():
    [result] = run_checks([plan(make_check("t.none", returns_nothing))], budget_s=5)
    assert result.status is Status.ERROR
    assert "no result" in result.message


def test_group_shares_one_child_and_a_hang_fails_the_rest_of_the_group():
    pids = []

    def first(ctx):
        pids.append(os.getpid())
        yield CheckResult("g.first", Status.PASS, str(os.getpid()))

    def second(ctx):
        yield CheckResult("g.second", Status.PASS, str(os.getpid()))

    results = run_checks(
        [
            plan(make_check("g.first", first, group="g")),
            plan(make_check("g.second", second, group="g")),
        ],
        budget_s=5,
    )
    assert results[0].message == results[1].message  # same child pid
    assert results[0].message != str(os.getpid())

    results = run_checks(
        [
            plan(make_check("t.hang", hangs, group="h"), timeout=0.4),
            plan(make_check("g.second", second, group="h"), timeout=0.4),
        ],
        budget_s=5,
    )
    assert [r.status for r in results] == [Status.FAIL, Status.SKIP]
    assert "earlier probe in its group (t.hang) hung" in results[1].message
    assert results[1].values == {"not_run": True, "hung_check": "t.hang"}


def test_each_check_of_a_group_keeps_its_own_timeout():
    """A check that hangs is cut at its own timeout, not the group's: host.mem (2 s) shares
    a child with host.disk (5 s)."""

    def quick(ctx):
        yield CheckResult("g.quick", Status.PASS, "fine")

    results = run_checks(
        [
            plan(make_check("g.quick", quick, group="g"), timeout=3.0),
            plan(make_check("t.hang", hangs, group="g"), timeout=0.5),
            plan(make_check("g.last", passing, group="g"), timeout=3.0),
        ],
        budget_s=10,
    )
    assert [r.status for r in results] == [Status.PASS, Status.FAIL, Status.SKIP]
    assert 0.5 <= hung_after(results[1]) < 2.5  # the hung check's 0.5 s, not the group's 3 s
    assert results[1].message.endswith("s in nvmlDeviceGetRemappedRows gpu3")
    assert "earlier probe in its group (t.hang) hung" in results[2].message


def test_many_checks_run_concurrently():
    """Each check in its own process, all at the same time: every one had started before
    any had finished (CLOCK_MONOTONIC is one clock for all processes)."""

    def slow(ctx):
        began = time.monotonic()
        time.sleep(0.3)
        values = {"pid": os.getpid(), "began": began, "ended": time.monotonic()}
        yield CheckResult(ctx.options["id"], Status.PASS, "ok", values=values)

    planned = []
    for i in range(6):
        chk = make_check(f"t.slow{i}", slow)
        ctx = make_ctx(options={"id": f"t.slow{i}"})
        planned.append(Planned(chk, ctx, 5))
    results = run_checks(planned, budget_s=5)
    assert all(r.status is Status.PASS for r in results)
    assert len({r.values["pid"] for r in results}) == 6
    assert max(r.values["began"] for r in results) < min(r.values["ended"] for r in results)


def test_a_group_gets_the_sum_of_its_timeouts():
    """Two checks of 0.6 s, each allowed 1 s: the second ends 1.2 s after the group began,
    past the longest single timeout, and must not be cut as a false 'probe hung'."""

    def slow_pass(ctx):
        time.sleep(0.6)
        yield CheckResult(ctx.options["id"], Status.PASS, "ok")

    planned = [
        Planned(make_check(cid, slow_pass, group="g"), make_ctx(options={"id": cid}), 1.0)
        for cid in ("g.one", "g.two")
    ]
    results = run_checks(planned, budget_s=10)
    assert [(r.check_id, r.status) for r in results] == [
        ("g.one", Status.PASS),
        ("g.two", Status.PASS),
    ]


def test_probe_children_hold_none_of_the_parents_descriptors(tmp_path):
    """slurmd waits for EOF on the prolog's stdout/stderr: a probe stuck in the kernel must
    not hold a copy of them (or of anything else the hook has open)."""
    held_open = open(tmp_path / "parent-file", "w")  # noqa: SIM115 (kept open on purpose)

    def lists_fds(ctx):
        fds = {}
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        yield CheckResult("t.fds", Status.PASS, "listed", values={"fds": fds})

    try:
        [result] = run_checks([plan(make_check("t.fds", lists_fds))], budget_s=5)
    finally:
        held_open.close()
    fds = result.values["fds"]
    assert {fd: fds[fd] for fd in (0, 1, 2)} == dict.fromkeys((0, 1, 2), "/dev/null")
    others = {fd: target for fd, target in fds.items() if fd > 2}
    # the child's report pipe, and the listing's own descriptor of /proc/self/fd
    assert sorted(t.split(":")[0] for t in others.values() if "pipe" in t) == ["pipe"]
    assert not [t for t in others.values() if "parent-file" in t], others


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_fork_failure_part_way_kills_the_children_already_started(monkeypatch):
    started: list[int] = []
    real_fork = os.fork

    def fork_twice_then_fail():
        if len(started) == 2:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        pid = real_fork()
        if pid:
            started.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork_twice_then_fail)
    planned = [plan(make_check(f"t.hang{i}", hangs), timeout=30) for i in range(3)]
    results = run_checks(planned, budget_s=30)
    assert len(started) == 2
    assert all(_gone(pid) for pid in started), started
    assert {r.status for r in results} == {Status.ERROR}
    assert "cannot start a probe process" in results[0].message
    assert "Resource temporarily unavailable" in results[0].message


KILLED_PARENT = """
import sys, time
sys.path.insert(0, {tests!r})
from helpers import make_check, make_ctx
from nodecheck.core.results import CheckResult, Status
from nodecheck.run.runner import Planned, run_checks

def hangs(ctx):
    open({pidfile!r}, "w").write(str(__import__("os").getpid()))
    time.sleep(3600)
    yield CheckResult("t.hang", Status.PASS, "never")

run_checks([Planned(make_check("t.hang", hangs), make_ctx(), 600)], budget_s=600)
"""


def test_kill_9_of_the_parent_takes_its_hung_probe_with_it(tmp_path):
    pidfile = tmp_path / "probe.pid"
    code = KILLED_PARENT.format(tests=str(Path(__file__).parent), pidfile=str(pidfile))
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.05)
        probe = int(pidfile.read_text())
        assert not _gone(probe)
    finally:
        parent.kill()  # SIGKILL: no cleanup code of ours runs in the parent
        parent.wait()
    for _ in range(20):  # within a second
        if _gone(probe):
            break
        time.sleep(0.05)
    assert _gone(probe), f"probe {probe} outlived its parent"


def test_the_drain_reason_leads_with_the_check_that_hung_and_its_last_step():
    """Checks a hang kept from running are not failures: the reason names the hung check
    and where it hung, with no '(+N more)' for checks that never ran."""
    from nodecheck.run.decide import decide

    results = run_checks(
        [
            plan(make_check("t.hang", hangs, group="h"), timeout=0.4),
            plan(make_check("t.after", passing, group="h"), timeout=0.4),
        ],
        budget_s=5,
    )
    verdict = decide(results, "prolog", "812", "pass")
    assert verdict.reason is not None
    assert verdict.reason.startswith("nodecheck: t.hang node: probe hung after 0.")
    assert "in nvmlDeviceGetRemappedRows gpu3 [prolog job 812" in verdict.reason
    assert "more)" not in verdict.reason


def test_a_path_that_is_missing_or_refused_still_answers(tmp_path):
    """Only a hang is 'no answer': a state dir not created yet (two levels down) is fine."""
    from nodecheck.core.isolate import stat_answers

    assert stat_answers(tmp_path / "state" / "n1", 5.0)
    assert stat_answers(Path("/proc/1/root/nonexistent-nodecheck"), 5.0)
