"""The agent's probe pool (nodecheck/run/pool.py), with real member processes: a run lent
the pool gets what a forked probe child would have given it, forks nothing, and keeps every
isolation a forked child had: a member that hangs is killed and replaced, one that dies
costs only its own group, and nothing of an earlier run (a run that went away halfway, its
environment, deadline, memory limit, NVML snapshot) reaches a later one."""

from __future__ import annotations

import os
import resource
import signal
import time
from pathlib import Path

import pytest
from helpers import dies, hangs, make_check, make_ctx, raises

from nodecheck.core import progress
from nodecheck.core.results import CheckResult, Status
from nodecheck.probes import nvml
from nodecheck.run import pool, runner
from nodecheck.run.runner import Planned, run_checks
from nodecheck.store import state
from tests.fixtures.fuse_hang import hung_mount

REPLAY = Path(__file__).parents[1] / "fixtures" / "nvml" / "h100-healthy.json"


def passing(ctx):
    yield CheckResult("p.pass", Status.PASS, f"pid {os.getpid()}", values={"pid": os.getpid()})


def slow(ctx):
    time.sleep(0.5)
    yield CheckResult("p.slow", Status.PASS, "late")


def what_the_run_set(ctx):
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    values = {
        "environ": os.environ.get("NODECHECK_POOL_TEST"),
        "deadline": state.run_deadline(),
        "responsive": {str(k): v for k, v in state.known_responsive().items()},
        "limit": None if limit == resource.RLIM_INFINITY else limit,
        "nvml_cached": nvml._cached.cache_info().currsize,
    }
    nvml.get_snapshot(f"replay:{REPLAY}")  # leaves a snapshot in this process's cache
    yield CheckResult("p.context", Status.PASS, "seen", values=values)


def stats_a_path(ctx):
    progress.note(f"stat {ctx.options['path']}")
    os.stat(ctx.options["path"])
    yield CheckResult("p.stat", Status.PASS, "answered")


CHECKS = {
    "p.stat": stats_a_path,
    "p.pass": passing,
    "p.hang": hangs,
    "p.raise": raises,
    "p.die": dies,
    "p.slow": slow,
    "p.context": what_the_run_set,
}


def plan(check_id: str, timeout: float = 5.0, **options) -> Planned:
    check = make_check(check_id, CHECKS[check_id], timeout_s=timeout)
    return Planned(check, make_ctx(options=options), timeout)


@pytest.fixture
def probes(monkeypatch):
    """A pool with one member per test check, lent to this process's runs; forking a probe
    child instead fails the test."""
    members = pool.ProbePool(CHECKS, runner.serve_request)
    lent, lease = members.lend()
    pool.use(lent, lease)

    def no_fork(*args, **kwargs):
        raise AssertionError("the run forked a probe child although the pool was lent")

    monkeypatch.setattr(runner, "_fork_group", no_fork)
    yield members
    pool.give_back()
    pool.use([], None)
    members.close()
    for member in members.members.values():
        os.waitpid(member.pid, 0)


def replaced(members: pool.ProbePool, group: str, old_pid: int) -> int:
    """Reap the member the run killed (as the agent's loop does) and return its successor."""
    os.waitpid(old_pid, 0)
    members.settle(old_pid)
    new_pid = members.members[group].pid
    assert new_pid != old_pid
    members.forget_lease()
    lent, lease = members.lend()
    pool.use(lent, lease)
    return new_pid


def test_a_lent_pool_runs_the_groups_in_its_members_run_after_run(probes):
    member = probes.members["p.pass"].pid
    for _ in range(3):
        [r] = run_checks([plan("p.pass")], budget_s=5)
        assert r.status is Status.PASS and r.values == {"pid": member}


def test_a_hung_member_fails_its_check_is_killed_and_replaced(probes):
    old = probes.members["p.hang"].pid
    results = run_checks([plan("p.hang", timeout=0.5), plan("p.pass")], budget_s=10)
    by_id = {r.check_id: r for r in results}
    assert by_id["p.hang"].status is Status.FAIL
    assert by_id["p.hang"].message.startswith("probe hung after ")
    assert by_id["p.hang"].message.endswith("s in nvmlDeviceGetRemappedRows gpu3")
    assert by_id["p.pass"].status is Status.PASS
    _, status = os.waitpid(old, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    probes.settle(old)
    new = probes.members["p.hang"].pid
    assert new != old
    probes.forget_lease()
    pool.use(*probes.lend())
    [r] = run_checks([plan("p.pass")], budget_s=5)  # the pool serves on
    assert r.status is Status.PASS


def test_an_exception_is_an_error_of_that_check_and_the_member_serves_on(probes):
    member = probes.members["p.raise"].pid
    for _ in range(2):
        [r] = run_checks([plan("p.raise")], budget_s=5)
        assert r.status is Status.ERROR and "ValueError: bad parse" in r.message
    assert probes.members["p.raise"].pid == member
    assert os.waitpid(member, os.WNOHANG) == (0, 0)  # alive


def test_a_member_that_dies_costs_only_its_own_group(probes):
    old = probes.members["p.die"].pid
    results = run_checks([plan("p.die"), plan("p.pass")], budget_s=5)
    by_id = {r.check_id: r for r in results}
    assert by_id["p.die"].status is Status.ERROR
    assert by_id["p.die"].message.startswith("internal error: probe process ended without")
    assert by_id["p.pass"].status is Status.PASS
    replaced(probes, "p.die", old)
    [r] = run_checks([plan("p.pass")], budget_s=5)
    assert r.status is Status.PASS


def test_what_a_run_sets_reaches_the_member_afresh_with_every_request(
    probes, tmp_path, monkeypatch
):
    monkeypatch.setenv("NODECHECK_POOL_TEST", "first run")
    state.set_run_deadline(time.monotonic() + 30)
    state.reset_responsive({tmp_path / "a": None, tmp_path / "b": "no answer within 1.0s"})
    try:
        [first] = run_checks([plan("p.context")], budget_s=5, memory_limit_mb=512)
        assert first.values["environ"] == "first run"
        assert first.values["deadline"] == state.run_deadline()
        assert first.values["responsive"] == {
            str(tmp_path / "a"): None,
            str(tmp_path / "b"): "no answer within 1.0s",
        }
        assert first.values["limit"] == 512 * 1024 * 1024
        assert first.values["nvml_cached"] == 0
        # The next run: another deadline, nothing known of b, no memory limit, and none of
        # the NVML snapshot the first run left behind.
        monkeypatch.delenv("NODECHECK_POOL_TEST")
        state.set_run_deadline(time.monotonic() + 60)
        state.reset_responsive({tmp_path / "a": None})
        [second] = run_checks([plan("p.context")], budget_s=5, memory_limit_mb=0)
        assert second.values["environ"] is None
        assert second.values["deadline"] == state.run_deadline()
        assert second.values["responsive"] == {str(tmp_path / "a"): None}
        assert second.values["limit"] is None
        assert second.values["nvml_cached"] == 0
    finally:
        state.set_run_deadline(None)
        state.reset_responsive({})


def test_nothing_of_a_run_that_went_away_reaches_the_next(probes):
    """A run killed halfway leaves its member busy, writing into a pipe nobody reads: the
    next run's request waits its turn and gets its own pipe, so none of those frames."""
    member = probes.members["p.slow"]
    gone = pool.ask(member, [plan("p.slow")], 0, pool.run_context())
    os.close(gone)  # the run that asked has gone before the answer
    [r] = run_checks([plan("p.slow")], budget_s=5)
    assert (r.status, r.message) == (Status.PASS, "late")
    assert os.waitpid(member.pid, os.WNOHANG) == (0, 0)  # the broken pipe did not end it


def test_a_pool_lent_elsewhere_is_not_lent_again_until_given_back():
    members = pool.ProbePool(["p.pass"], runner.serve_request)
    try:
        lent, lease = members.lend()
        assert [m.group for m in lent] == ["p.pass"] and lease is not None
        assert members.lend() == ([], None)  # the lease is still held
        os.close(lease)  # given back (a worker closes it, or exits)
        again, lease = members.lend()
        assert again == lent
        os.close(lease)
    finally:
        members.close()
        for member in members.members.values():
            os.waitpid(member.pid, 0)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_member_stuck_in_the_kernel_is_never_lent_again(probes, tmp_path):
    """A member that hung on a dead mount sleeps in the kernel (state D) through its
    SIGKILL: lent to the next run, it would hang that run too and drain a healthy node. The
    run names it in its lease; the agent replaces it before lending the pool again."""
    old = probes.members["p.stat"].pid
    with hung_mount(tmp_path / "mnt") as mnt:
        [r] = run_checks([plan("p.stat", timeout=0.5, path=str(mnt / "x"))], budget_s=5)
        assert r.status is Status.FAIL and r.message.endswith(f"in stat {mnt / 'x'}")
        time.sleep(0.2)
        assert _state(old) == "D"  # killed, and still there
        pool.give_back()
        lent, lease = probes.lend()
        assert old not in {member.pid for member in lent}
        assert probes.stuck == {old: "p.stat"}
        pool.use(lent, lease)
        [r] = run_checks([plan("p.stat", timeout=2, path=str(tmp_path))], budget_s=5)
        assert r.status is Status.PASS  # the group's new member serves
    os.waitpid(old, 0)  # the mount went: the kernel let it go
    probes.settle(old)
    assert probes.stuck == {}
