"""The plan as a table: verdict + gathered situation + settings -> step, action, exit code.

Pure: no Slurm, no SQLite. Node states are NodeInfo values as the backends parse them
(reason times in Slurm's local ISO format, see tests/unit/test_slurm_backends.py).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from nodecheck.core.node import NodeInfo
from nodecheck.core.plan import (
    HeldBack,
    HistoryWindow,
    Marker,
    PendingFailure,
    Situation,
    SlurmView,
    Step,
)
from nodecheck.core.reason import parse_reason
from nodecheck.core.results import CheckResult, Status
from nodecheck.run.decide import (
    EXIT_FAIL,
    EXIT_OK,
    PlanSettings,
    decide,
    hold_reason,
    needs_history,
    needs_slurm,
    plan,
)

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 25, 22, 0, 0).timestamp()
PASS = CheckResult("host.mem", Status.PASS, "ok")
MOUNT = CheckResult("host.mounts", Status.FAIL, "not mounted", "/scratch")
ECC = CheckResult("gpu.ecc", Status.FAIL, "2 DBE", "gpu1", severity="critical")
XID = CheckResult("gpu.xid", Status.FAIL, "Xid 79 (fallen off the bus)", "gpu3", severity="high")
OURS = "nodecheck: host.mounts /scratch: not mounted [prolog job 7]"
NO_BREAKER = PlanSettings(breaker_max_share=0, breaker_max_drains=0)


def at(seconds_from_now: float) -> str:
    return datetime.fromtimestamp(NOW + seconds_from_now).isoformat(timespec="seconds")


def idle(name="n1", parts=("gpu",)):
    return NodeInfo(name, ("IDLE",), partitions=parts)


def drained(reason, name="n1", when=-60.0, parts=("gpu",)):
    return NodeInfo(name, ("IDLE", "DRAIN"), reason, "root", at(when), parts)


def situation(phase="prolog", node=None, nodes=(), window=None, job="7"):
    view = None if node is None else SlurmView(node, tuple(nodes))
    return Situation("n1", phase, job, NOW, window or HistoryWindow(), view)


def verdict_of(*results, phase="prolog", job="7", scope=None):
    return decide(list(results), phase, job, "pass", scope)


def test_a_healthy_prolog_needs_neither_history_nor_the_controller():
    verdict = verdict_of(PASS)
    assert not needs_history(verdict, "prolog") and not needs_history(verdict, "epilog")
    got = plan(verdict, situation(), PlanSettings())
    assert (got.step, got.action, got.exit_code) == (Step.NOTHING, "none", EXIT_OK)


@pytest.mark.parametrize(
    ("node", "marker", "step", "action"),
    [
        (idle(), None, Step.DRAIN, "drained"),
        (drained(OURS), Marker(OURS, NOW - 60), Step.KEEP, "already drained"),
        # a sibling prolog on this node drained a moment ago and has not written its marker
        (drained(OURS), None, Step.KEEP, "already drained"),
        (drained("PSU swap"), None, Step.ADMIN_KEPT, "admin drain kept"),
        # an admin appended to our reason: it is theirs now (issue 13.5)
        (
            drained(OURS + " -- RMA 44 KEEP DRAINED"),
            Marker(OURS, NOW - 60),
            Step.ADMIN_KEPT,
            "admin drain kept",
        ),
    ],
)
def test_drain_plans(node, marker, step, action):
    got = plan(verdict_of(MOUNT), situation(node=node, window=HistoryWindow(marker)), NO_BREAKER)
    assert (got.step, got.action, got.exit_code) == (step, action, EXIT_FAIL)
    if step is Step.DRAIN:
        assert got.reason.startswith("nodecheck: host.mounts /scratch: not mounted")
        assert got.new_episode and not got.check_wave


@pytest.mark.parametrize(
    ("node", "step", "action"),
    [
        (drained(OURS), Step.RESUME, "resumed"),
        (idle(), Step.FORGET, "not drained"),
        (
            drained(OURS + " -- RMA 44 KEEP DRAINED"),
            Step.FORGET,
            "refused: drained by someone else",
        ),
        (drained("RMA"), Step.FORGET, "refused: drained by someone else"),
    ],
)
def test_health_pass_resumes_only_the_exact_reason_we_set(node, step, action):
    window = HistoryWindow(Marker(OURS, NOW - 600), passes_since_drain=0)
    got = plan(
        verdict_of(PASS, phase="health"), situation("health", node, window=window), NO_BREAKER
    )
    assert (got.step, got.action, got.exit_code) == (step, action, EXIT_OK)


def test_resume_via_validation_holds_our_drain_for_the_quarantine_loop():
    """resume_via = "validation": health never resumes by itself; the node stays drained
    until `nodecheck validate --pending` returns it (then the marker is forgotten)."""
    settings = PlanSettings(breaker_max_share=0, breaker_max_drains=0, resume_via="validation")
    window = HistoryWindow(Marker(OURS, NOW - 600), passes_since_drain=0)
    verdict = verdict_of(PASS, phase="health")
    got = plan(verdict, situation("health", drained(OURS), window=window), settings)
    assert (got.step, got.action, got.reason) == (Step.HOLD, "held: awaiting validation", OURS)
    returned = plan(verdict, situation("health", idle(), window=window), settings)
    assert (returned.step, returned.action) == (Step.FORGET, "not drained")


def test_a_never_validated_node_is_drained_until_validation_returns_it():
    settings = PlanSettings(breaker_max_share=0, breaker_max_drains=0, validate_new_nodes=True)
    verdict = verdict_of(PASS, phase="health")
    new = HistoryWindow(validated=False)
    assert needs_slurm(verdict, "health", new, settings, NOW)
    got = plan(verdict, situation("health", idle(), window=new), settings)
    assert (got.step, got.action) == (Step.DRAIN, "drained: never validated")
    parsed = parse_reason(got.reason)
    assert (parsed.check_id, parsed.remedy, parsed.phase) == ("validate.new", "validate", "health")
    # Inside the quarantine loop's reservation it is being validated: left alone.
    reserved = NodeInfo("n1", ("IDLE", "MAINT", "RESERVED"), partitions=("gpu",))
    assert plan(verdict, situation("health", reserved, window=new), settings).step is Step.NOTHING
    # Drained for it, it is held (health never resumes it), whatever resume_via says.
    held = HistoryWindow(Marker(got.reason, NOW - 60), validated=False)
    again = plan(verdict, situation("health", drained(got.reason), window=held), settings)
    assert (again.step, again.action) == (Step.HOLD, "held: awaiting validation")
    # Validated once: nothing more, and the controller is not even asked.
    done = HistoryWindow(validated=True)
    assert not needs_slurm(verdict, "health", done, settings, NOW)
    assert plan(verdict, situation("health", window=done), settings).step is Step.NOTHING
    # Off (the default): a never-validated node is not the plan's business.
    assert not needs_slurm(verdict, "health", new, NO_BREAKER, NOW)


def test_resume_waits_for_enough_passes_without_asking_the_controller():
    settings = PlanSettings(resume_after_passes=3)
    verdict = verdict_of(PASS, phase="health")
    window = HistoryWindow(Marker(OURS, NOW - 600), passes_since_drain=1)
    assert not needs_slurm(verdict, "health", window, settings, NOW)
    got = plan(verdict, situation("health", window=window), settings)
    assert (got.step, got.action) == (Step.WAIT, "passed 2/3 before resume")
    later = HistoryWindow(Marker(OURS, NOW - 600), passes_since_drain=2)
    assert needs_slurm(verdict, "health", later, settings, NOW)


def test_the_manual_resume_hold_looks_at_every_failure_of_the_drain():
    """gpu.ecc leads the reason, gpu.xid 79 is second: still a human's call (issue 13.8)."""
    verdict = verdict_of(ECC, XID)
    assert parse_reason(verdict.reason).check_id == "gpu.ecc"
    marker = Marker(verdict.reason, NOW - 600, checks=("gpu.ecc", "gpu.xid"))
    assert hold_reason(marker, PlanSettings()) == "gpu.xid needs a manual resume"
    got = plan(
        verdict_of(PASS, phase="health"),
        situation("health", drained(verdict.reason), window=HistoryWindow(marker)),
        NO_BREAKER,
    )
    assert (got.step, got.action) == (Step.HOLD, "held: gpu.xid needs a manual resume")
    # A marker written before the checks were kept: the leading check decides, as before.
    assert hold_reason(Marker(verdict.reason, 0), PlanSettings()) is None


def crowd(drained_nodes=2, total=8):
    """n1 healthy-looking to Slurm, `drained_nodes` others already drained by nodecheck."""
    nodes = [idle("n1", ("debug",))]
    nodes += [drained(OURS, f"d{i}", parts=("debug",)) for i in range(drained_nodes)]
    nodes += [idle(f"h{i}", ("debug",)) for i in range(total - drained_nodes - 1)]
    return nodes


BREAKER = PlanSettings(breaker_max_share=0.25, breaker_floor=1, breaker_max_drains=0)


@pytest.mark.parametrize(
    ("action", "verdict", "exit_code"),
    [
        ("run", verdict_of(MOUNT), EXIT_OK),
        ("fail", verdict_of(MOUNT), EXIT_FAIL),
        ("run", verdict_of(MOUNT, phase="epilog"), EXIT_OK),
        # job_scoped: a failure outside the job's GPUs lets the job run (exit 0) and drains
        # the node; with the breaker open the exit follows breaker_open_action (issue 13.8)
        ("run", verdict_of(MOUNT, scope=lambda r: False), EXIT_OK),
        ("fail", verdict_of(MOUNT, scope=lambda r: False), EXIT_FAIL),
    ],
)
def test_an_open_breaker_stops_the_drain_and_the_exit_follows_the_setting(
    action, verdict, exit_code
):
    settings = PlanSettings(
        breaker_max_share=0.25, breaker_floor=1, breaker_max_drains=0, breaker_open_action=action
    )
    nodes = crowd()
    got = plan(verdict, situation(node=nodes[0], nodes=nodes), settings)
    assert (got.step, got.action, got.exit_code) == (Step.BREAKER_HELD, "breaker open", exit_code)
    assert "partition debug: 2 of 8" in got.why and got.held_since == NOW
    # Under the limit the same failure drains, and checks the wave after draining.
    few = crowd(drained_nodes=1)
    got = plan(verdict, situation(node=few[0], nodes=few), settings)
    assert got.step is Step.DRAIN and got.check_wave


def test_a_held_back_node_keeps_its_first_hold_time_and_drains_with_it_once_closed():
    window = HistoryWindow(held_back=HeldBack(NOW - 3600, OURS, "partition debug full"))
    nodes = crowd()
    still = plan(verdict_of(MOUNT), situation(node=nodes[0], nodes=nodes, window=window), BREAKER)
    assert still.step is Step.BREAKER_HELD and still.held_since == NOW - 3600
    few = crowd(drained_nodes=1)
    got = plan(verdict_of(MOUNT, phase="health"), situation("health", few[0], few, window), BREAKER)
    assert got.step is Step.DRAIN and got.held_since == NOW - 3600
    assert parse_reason(got.reason).held_since == str(int(NOW - 3600))
    # Its failure vanished: nothing to do, no controller call (record clears the hold).
    verdict = verdict_of(PASS, phase="health")
    assert not needs_slurm(verdict, "health", window, BREAKER, NOW)
    assert plan(verdict, situation("health", window=window), BREAKER).step is Step.NOTHING


PENDING = PendingFailure(OURS, NOW - 300, "prolog", "7")


@pytest.mark.parametrize(
    ("node", "step"),
    [
        (drained("Prolog error", when=-120), Step.DRAIN),  # Slurm's drain after our failure
        (drained("Prolog error", when=-900), Step.ADMIN_KEPT),  # before it: not ours
        (drained("Epilog error", when=-120), Step.ADMIN_KEPT),  # another phase's failure
        (drained("Prolog error -- disk", when=-120), Step.DRAIN),  # Slurm appends details
    ],
)
def test_slurms_prolog_error_drain_is_adopted_when_it_matches_our_failure(node, step):
    """Controller down during a failing prolog (issue 13.3): the epilog adopts the drain."""
    window = HistoryWindow(pending=PENDING)
    got = plan(verdict_of(MOUNT, phase="epilog"), situation("epilog", node, window=window), BREAKER)
    assert got.step is step
    if step is Step.DRAIN:
        assert got.action == "adopted drained" and got.adopted.startswith("Prolog error")
        assert not got.check_wave  # no new node is drained: the breaker has nothing to count


def test_a_passing_health_run_adopts_the_drain_with_the_recorded_reason():
    window = HistoryWindow(pending=PENDING)
    verdict = verdict_of(PASS, phase="health")
    assert needs_slurm(verdict, "health", window, PlanSettings(), NOW)
    node = drained("Prolog error", when=-120)
    got = plan(verdict, situation("health", node, window=window, job=None), PlanSettings())
    assert (got.step, got.reason, got.exit_code) == (Step.DRAIN, OURS, EXIT_OK)
    # Past the adoption window a passing node no longer asks the controller.
    assert not needs_slurm(verdict, "health", window, PlanSettings(), NOW + 7 * 3600)


def test_dry_run_unreachable_controller_and_flapping():
    dry = PlanSettings(dry_run=True)
    verdict = verdict_of(MOUNT)
    assert not needs_slurm(verdict, "prolog", HistoryWindow(), dry, NOW)
    got = plan(verdict, situation(), dry)
    assert (got.step, got.action, got.exit_code) == (Step.WOULD_DRAIN, "would drain", EXIT_OK)

    down = Situation("n1", "prolog", "7", NOW, HistoryWindow(), SlurmView(error="timed out"))
    got = plan(verdict, down, NO_BREAKER)
    assert (got.step, got.action, got.exit_code) == (Step.FAILED, "drain failed", EXIT_FAIL)

    flappy = PlanSettings(flap_max_drains=2, flap_window_s=3600, breaker_max_share=0)
    got = plan(verdict, situation(node=idle(), window=HistoryWindow(drains_in_window=2)), flappy)
    assert (got.step, got.action) == (Step.DRAIN, "drained (flapping)")
    assert got.flap_hold_starts and "flapping (drained 3x in 1h)" in got.reason


def test_the_healthy_prolog_does_not_import_nodecheck_slurm(tmp_path):
    """A real in-process prolog on this host (host.mounts of "/" only): the controller's
    package is never even imported."""
    tmp_path.chmod(0o755)
    cfg = tmp_path / "nodecheck.toml"
    from nodecheck.checks.registry import all_checks

    disabled = "".join(
        f'[checks."{cid}"]\nenabled = false\n' for cid in all_checks() if cid != "host.mounts"
    )
    cfg.write_text(
        f'state_dir = "{tmp_path}/state"\nmetrics_file = ""\nlog_file = ""\n'
        f'killswitch_file = "{tmp_path}/off"\n[checks."host.mounts"]\nrequired = ["/"]\n' + disabled
    )
    code = (
        "import sys\n"
        "from nodecheck.run.pipeline import RunRequest, execute\n"
        "out = execute(RunRequest('prolog', {'SLURMD_NODENAME': 'n1', 'SLURM_JOB_ID': '9'},"
        f" {str(cfg)!r}, act=True))\n"
        "print(out.verdict.status.name, out.action_taken,"
        " sorted(m for m in sys.modules if m.startswith('nodecheck.slurm')))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[:2] == ["PASS", "none"], run.stdout
    assert run.stdout.strip().endswith("[]"), run.stdout


def test_the_verdict_counts_failed_checks_not_components():
    other_gpu = CheckResult("gpu.ecc", Status.FAIL, "1 DBE", "gpu5", severity="critical")
    got = decide([ECC, other_gpu, MOUNT], "prolog", "7", "pass")
    assert got.summary == "2 check(s) failed"
