import os
import signal
import time

from helpers import make_check, make_ctx

from nodecheck.run import progress
from nodecheck.run.results import CheckResult, Status
from nodecheck.run.runner import Planned, run_checks


def plan(check, timeout=None):
    return Planned(check, make_ctx(), timeout or check.timeout_s)


def passing(ctx):
    yield CheckResult("t.pass", Status.PASS, "fine", component="gpu0")


def hangs(ctx):
    progress.note("nvmlDeviceGetRemappedRows gpu3")
    time.sleep(3600)
    yield CheckResult("t.hang", Status.PASS, "never")


def raises(ctx):
    raise ValueError("bad parse of 'x'")
    yield  # pragma: no cover


def dies(ctx):
    os.kill(os.getpid(), signal.SIGSEGV)
    yield  # pragma: no cover


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
    started = time.monotonic()
    results = run_checks(
        [plan(make_check("t.hang", hangs), timeout=0.5), plan(make_check("t.pass", passing))],
        budget_s=10,
    )
    took = time.monotonic() - started
    by_id = {r.check_id: r for r in results}
    assert by_id["t.pass"].status is Status.PASS
    assert by_id["t.hang"].status is Status.FAIL
    assert "probe hung" in by_id["t.hang"].message
    assert "nvmlDeviceGetRemappedRows gpu3" in by_id["t.hang"].message
    assert took < 5  # bounded by the 0.5 s deadline, not by the sleep


def test_whole_run_budget_caps_a_long_check_timeout():
    started = time.monotonic()
    results = run_checks([plan(make_check("t.hang", hangs), timeout=60)], budget_s=0.7)
    assert results[0].status is Status.FAIL
    assert time.monotonic() - started < 0.7 + 0.5


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
    assert [r.status for r in results] == [Status.FAIL, Status.FAIL]
    assert "earlier probe in its group (t.hang) hung" in results[1].message


def test_each_check_of_a_group_keeps_its_own_timeout():
    """A group's child lives as long as its longest timeout, but a check that hangs is cut
    at its own: host.mem (2 s) shares a child with host.disk (5 s)."""

    def quick(ctx):
        yield CheckResult("g.quick", Status.PASS, "fine")

    started = time.monotonic()
    results = run_checks(
        [
            plan(make_check("g.quick", quick, group="g"), timeout=3.0),
            plan(make_check("t.hang", hangs, group="g"), timeout=0.5),
            plan(make_check("g.last", passing, group="g"), timeout=3.0),
        ],
        budget_s=10,
    )
    took = time.monotonic() - started
    assert [r.status for r in results] == [Status.PASS, Status.FAIL, Status.FAIL]
    hung_for = float(results[1].message.split("within ")[1].split("s")[0])
    assert 0.5 <= hung_for < 2.5
    assert "earlier probe in its group (t.hang) hung" in results[2].message
    assert took < 2.5  # cut at the hung check's 0.5 s, not the group's 3 s


def test_many_checks_run_concurrently():
    def slow(ctx):
        time.sleep(0.3)
        yield CheckResult(ctx.options["id"], Status.PASS, "ok")

    planned = []
    for i in range(6):
        chk = make_check(f"t.slow{i}", slow)
        ctx = make_ctx(options={"id": f"t.slow{i}"})
        planned.append(Planned(chk, ctx, 5))
    started = time.monotonic()
    results = run_checks(planned, budget_s=5)
    assert all(r.status is Status.PASS for r in results)
    assert time.monotonic() - started < 6 * 0.3
