import pytest

from nodecheck.core.reason import MAX_REASON, format_reason, parse_reason
from nodecheck.core.results import CheckResult, Status
from nodecheck.run.decide import EXIT_FAIL, EXIT_INTERNAL, EXIT_OK, Action, decide

PASS = CheckResult("host.mem", Status.PASS, "ok")
WARN = CheckResult("host.disk", Status.WARN, "low", component="/tmp")
FAIL = CheckResult("gpu.remap", Status.FAIL, "row remap pending (needs GPU reset)", "gpu3")
ERROR = CheckResult("gpu.ecc", Status.ERROR, "internal error: KeyError")


def test_fail_drains_with_our_reason_and_nonzero_exit():
    v = decide([PASS, FAIL], "prolog", "812", "pass")
    assert v.action is Action.DRAIN
    assert v.exit_code == EXIT_FAIL
    assert (
        v.reason
        == "nodecheck: gpu.remap gpu3: row remap pending (needs GPU reset) [prolog job 812]"
    )


def test_warn_never_blocks():
    v = decide([PASS, WARN], "prolog", "812", "drain")
    assert v.exit_code == EXIT_OK
    assert v.action is Action.CLEAR
    assert v.warnings == (WARN,)


def test_internal_error_follows_policy():
    passed = decide([PASS, ERROR], "prolog", "1", "pass")
    assert passed.exit_code == EXIT_OK and passed.action is Action.NONE
    drained = decide([PASS, ERROR], "prolog", "1", "drain")
    assert drained.exit_code == EXIT_FAIL and drained.action is Action.DRAIN
    assert drained.reason.startswith("nodecheck: gpu.ecc node: internal error")


def test_manual_run_never_acts_and_reports_internal_errors():
    assert decide([FAIL], "manual", None, "pass").action is Action.NONE
    assert decide([FAIL], "manual", None, "pass").exit_code == EXIT_FAIL
    assert decide([ERROR], "manual", None, "pass").exit_code == EXIT_INTERNAL


def test_several_failures_are_counted_in_the_reason():
    other = CheckResult("host.mounts", Status.FAIL, "not mounted", component="/home")
    v = decide([FAIL, other], "epilog", "9", "pass")
    assert v.reason.endswith("(+1 more) [epilog job 9]")


@pytest.mark.parametrize(
    "hostile",
    [
        "line one\nline two\r\nthree",
        "quote \" and ' and `backtick` and $(reboot) ; rm -rf / | cat && x",
        "é unicode ✓ and \x00 nul and \x1b[31m escape",
        "x" * 5000,
    ],
)
def test_reason_is_one_safe_bounded_line(hostile):
    result = CheckResult("ib.port", Status.FAIL, hostile, component=f"mlx5_0/1 {hostile}")
    reason = format_reason([result], "prolog", "812")
    assert len(reason) <= MAX_REASON
    assert "\n" not in reason and "\r" not in reason and "\x00" not in reason
    assert not set(reason) & set('"`$|&\\\x1b')
    assert reason.startswith("nodecheck: ib.port ")
    assert reason.endswith("[prolog job 812]")
    parsed = parse_reason(reason)
    assert parsed is not None and parsed.check_id == "ib.port"


def test_quotes_stay_readable_in_the_reason():
    """A quote in a tool's or driver's words reads as a quote, not `?`: every kind becomes
    `'`, and the reason still reads back."""
    said = "mount \"/scratch\" said 'Stale file handle' (`stat` timed out)"
    result = CheckResult("host.mounts", Status.FAIL, said, component="/scratch")
    reason = format_reason([result], "epilog", "77")
    message = "mount '/scratch' said 'Stale file handle' ('stat' timed out)"
    assert reason == f"nodecheck: host.mounts /scratch: {message} [epilog job 77]"
    parsed = parse_reason(reason)
    assert parsed is not None and (parsed.component, parsed.message) == ("/scratch", message)


def test_reason_round_trips():
    reason = format_reason([FAIL, ERROR], "health", None)
    parsed = parse_reason(reason)
    assert (parsed.check_id, parsed.component, parsed.more, parsed.context) == (
        "gpu.remap",
        "gpu3",
        1,
        "health",
    )
    assert parsed.message == "row remap pending (needs GPU reset)"
    assert parse_reason("Kernel panic, replaced DIMM") is None


def test_most_severe_failure_leads_and_severity_and_remedy_round_trip():
    from nodecheck.checks.registry import all_checks, with_defaults

    registry = all_checks()
    disk = with_defaults(CheckResult("host.disk", Status.FAIL, "0.1 GiB free", "/tmp"), registry)
    mounts = with_defaults(
        CheckResult("host.mounts", Status.FAIL, "not mounted", "/home"), registry
    )
    assert (disk.severity, disk.remedy) == ("high", "cleanup")
    reason = format_reason([disk, mounts], "prolog", "812")
    assert reason == (
        "nodecheck: host.mounts /home: not mounted (+1 more) "
        "[prolog job 812 sev=critical act=admin]"
    )
    parsed = parse_reason(reason)
    assert (parsed.phase, parsed.job_id, parsed.severity, parsed.remedy, parsed.more) == (
        "prolog",
        "812",
        "critical",
        "admin",
        1,
    )
    own = CheckResult(
        "gpu.remap",
        Status.FAIL,
        "row remap failure (needs RMA)",
        "gpu3",
        severity="critical",
        remedy="replace",
    )
    assert with_defaults(own, registry) == own
    back = parse_reason(format_reason([own], "health", None))
    assert (back.phase, back.job_id, back.severity, back.remedy) == (
        "health",
        "",
        "critical",
        "replace",
    )


def test_internal_errors_get_low_severity_admin_remedy():
    from nodecheck.checks.registry import all_checks, with_defaults

    err = with_defaults(CheckResult("host.mem", Status.ERROR, "internal error: x"), all_checks())
    assert (err.severity, err.remedy) == ("low", "admin")
