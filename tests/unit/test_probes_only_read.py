"""Probes report what they read; every PASS/FAIL/WARN/ERROR/SKIP is decided in checks/.

So no module under nodecheck/probes/ imports the verdict types (`Status`, `CheckResult`)
from nodecheck.core.results, at module level or inside a function, nor spells a verdict as
a string ("PASS", "WARN", ...) to return or send. Read from the source with `ast`, like
tests/unit/test_layers.py, not from what a run happens to import."""

from __future__ import annotations

import ast
import socket
import threading
from dataclasses import fields as dataclass_fields
from dataclasses import replace
from pathlib import Path

import pytest

from nodecheck.core.results import Status

PROBES = Path(__file__).resolve().parents[2] / "nodecheck" / "probes"
RESULTS = "nodecheck.core.results"
VERDICT_TYPES = frozenset({"Status", "CheckResult"})
# A verdict spelt as a string: the names of Status, exactly (a probe's own lowercase words,
# a peer outcome "error" say, are readings, not verdicts).
VERDICT_STRINGS = frozenset(status.name for status in Status)
# Modules where those strings are what an external tool itself reported, not a verdict of
# nodecheck's: probes/active/tools.py reads `dcgmi diag --json`, whose every test result is
# DCGM's own pass/fail/warn/skip; it normalises DCGM's words, and deep.dcgm judges them.
VERDICT_STRING_EXEMPT = {"active/tools.py": "DCGM's own per-test results, parsed"}


def verdict_imports(source: str) -> list[str]:
    """Each import in `source` that brings in Status or CheckResult (or the whole results
    module, from which they are one attribute away), as 'line: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == RESULTS:
                    found.append(f"{node.lineno}: import {RESULTS}")
        elif isinstance(node, ast.ImportFrom) and not node.level:
            for alias in node.names:
                if node.module == RESULTS and alias.name in VERDICT_TYPES | {"*"}:
                    found.append(f"{node.lineno}: from {RESULTS} import {alias.name}")
                elif f"{node.module}.{alias.name}" == RESULTS:
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
    return found


def test_no_probe_imports_a_verdict_type():
    offenders = {
        str(path.relative_to(PROBES.parent)): hits
        for path in sorted(PROBES.rglob("*.py"))
        if (hits := verdict_imports(path.read_text()))
    }
    assert offenders == {}


def verdict_strings(source: str) -> list[str]:
    """Each string constant in `source` that is a verdict's name (Status), as 'line: NAME'.
    A bare string statement (a docstring, or prose where one could stand) is not a value;
    comments are not in the tree at all."""
    tree = ast.parse(source)
    prose = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    hits = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and id(node) not in prose
        and isinstance(node.value, str)
        and node.value in VERDICT_STRINGS
    ]
    return [f"{n.lineno}: {n.value}" for n in sorted(hits, key=lambda n: (n.lineno, n.col_offset))]


def test_no_probe_defines_or_returns_a_verdict_string():
    offenders = {
        rel: hits
        for path in sorted(PROBES.rglob("*.py"))
        if (rel := path.relative_to(PROBES).as_posix()) not in VERDICT_STRING_EXEMPT
        if (hits := verdict_strings(path.read_text()))
    }
    assert offenders == {}


def test_each_exemption_still_holds_verdict_strings():
    """An exemption whose module no longer needs it would hide the next real offender."""
    for rel in VERDICT_STRING_EXEMPT:
        assert verdict_strings((PROBES / rel).read_text()), rel


def test_the_walk_sees_the_probes():
    """An empty walk (a moved package) would pass the test above vacuously."""
    names = {p.relative_to(PROBES).as_posix() for p in PROBES.rglob("*.py")}
    assert {"fabric/counters.py", "jobscope.py"} <= names


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "from nodecheck.core.results import Status",
            ["1: from nodecheck.core.results import Status"],
        ),
        (
            "def f():\n    from nodecheck.core.results import CheckResult as R",
            ["2: from nodecheck.core.results import CheckResult"],
        ),
        ("from nodecheck.core.results import *", ["1: from nodecheck.core.results import *"]),
        ("import nodecheck.core.results as r", ["1: import nodecheck.core.results"]),
        ("from nodecheck.core import results", ["1: from nodecheck.core import results"]),
        ("from nodecheck.core.results import SEVERITIES", []),
        ("from nodecheck.core import clock", []),
        ("from nodecheck.probes.fabric.sysfs import ReadFailure", []),
    ],
)
def test_the_rule_itself(source, expected):
    assert verdict_imports(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('def judge():\n    return "FAIL"', ["2: FAIL"]),
        ('STATUS = {"ok": "PASS", "bad": "WARN"}', ["1: PASS", "1: WARN"]),
        ('v = Verdict("ERROR", "msg")', ["1: ERROR"]),
        ('"""Says PASS or FAIL."""\nx = 1', []),  # a docstring is prose
        ('def f():\n    """FAIL"""\n    return 1', []),
        ("x = 1  # WARN in a comment", []),
        ('kind = "error"', []),  # a reading's own lowercase word
        ('msg = f"{n} WARN"', []),  # part of a message, not a verdict
    ],
)
def test_the_verdict_string_rule_itself(source, expected):
    assert verdict_strings(source) == expected


# --- what moved: the probes' readings, the checks' verdicts on them -----------------------


def test_counter_probe_reports_rises_and_the_check_judges_them():
    from nodecheck.checks.fabric.counters import judge_port
    from nodecheck.probes.fabric.counters import compare_port

    current = {"link_downed": 4, "symbol_error": 10, "port_rcv_errors": 0xFFFF, "new": 1}
    previous = {"link_downed": 1, "symbol_error": 12, "port_rcv_errors": 0xFFFF}
    window = compare_port(current, previous)
    assert window.rises == {"link_downed": 3, "port_rcv_errors": 0}
    assert (window.reset, window.new_baseline) == (["symbol_error"], ["new"])
    assert window.saturated == ["port_rcv_errors"]
    assert not hasattr(window, "status")
    judged = judge_port(current, previous, {"link_downed": 2}, {})
    assert judged.status is Status.FAIL and judged.rises == window.rises
    assert judge_port(current, previous, {}, {}).status is Status.WARN  # saturated only


def test_every_recovery_action_a_branch_names_has_a_verdict():
    from nodecheck.checks.gpu.recovery import ACTION_VERDICTS
    from nodecheck.probes.recovery_action import BRANCH_TABLES, UNKNOWN_BRANCH

    named = {a.name for _, rows in BRANCH_TABLES for a in rows.values()}
    named |= {a.name for a in UNKNOWN_BRANCH.values()}
    assert named == set(ACTION_VERDICTS)
    assert {status for status, _ in ACTION_VERDICTS.values()} <= {"fail", "warn", "info"}


def test_nvlink_allowances_name_exactly_the_counters_the_model_reads():
    """The model says what a counter is; gpu.nvlink, keyed by its name, what a rise means."""
    from nodecheck.checks.gpu.links import DEFAULT_NVLINK_RISE, NEW_COUNTERS
    from nodecheck.probes.nvml.model import NVLINK_COUNTER_SPECS, NvLinkCounter

    names = [spec.name for spec in NVLINK_COUNTER_SPECS]
    assert list(DEFAULT_NVLINK_RISE) == names  # the same order: the option's shown default
    assert set(NEW_COUNTERS) <= set(names)
    assert {f.name for f in dataclass_fields(NvLinkCounter)} == {"name", "legacy", "field"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_preflight_probe_only_carries_the_verdicts_it_is_handed():
    """The coordinator sends each node the verdict of the Judging the check hands in, and a
    node whose preflight cannot finish takes that Judging's `incomplete`; the probe makes
    none of its own (here, made-up statuses travel the wire unchanged)."""
    from nodecheck.probes.fabric import preflight
    from nodecheck.probes.fabric import preflight_wire as wire

    def judge(nodes, joined, pass1, pass2, fraction, min_bps):
        assert set(pass1) == {(0, 1)} and not pass2 and joined == set(nodes)
        return {n: preflight.NodeVerdict("TEST", f"for {n}", {"f": fraction}) for n in nodes}

    judging = preflight.Judging(judge, lambda why: preflight.NodeVerdict("ASIDE", why))
    port, lone_port = free_port(), free_port()  # the run leaves its port in TIME_WAIT
    nodes = ("n1", "n2")
    addrs = {n: (socket.AF_INET, f"127.0.0.{i}") for i, n in enumerate(nodes, start=1)}
    key = wire.job_key(b"r" * 32, "42")
    setups = [
        preflight.Setup(me=n, nodes=nodes, job="42", key=key, addresses=addrs, port=port,
                        join_s=3.0, max_bytes=1 << 16, fraction=0.3)
        for n in nodes
    ]  # fmt: skip
    out: dict[str, preflight.Outcome] = {}
    threads = [
        threading.Thread(target=lambda s=s: out.__setitem__(s.me, preflight.run(s, judging)))
        for s in setups
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert out["n1"].verdict == preflight.NodeVerdict("TEST", "for n1", {"f": 0.3})
    assert out["n2"].verdict == preflight.NodeVerdict("TEST", "for n2", {"f": 0.3})
    alone = preflight.run(replace(setups[1], port=lone_port, join_s=0.2, measure_s=0.5), judging)
    assert alone.verdict.status == "ASIDE"
    assert alone.verdict.message.startswith("coordinator n1 not reached")
