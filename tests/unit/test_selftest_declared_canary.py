"""A gpu.* check declares its selftest canary in its own `@check(canary=NvmlCanary(...))`
(issue 30 item 5): the selftest builds it from the shared healthy H100 with nothing added
under nodecheck/selftest/, proves the check catches its fault and passes a healthy node,
and reports a declared canary the check does not detect as a failing selftest.

The throwaway checks are registered into a copy of the registry (monkeypatched back after
each test), so none leaks into other tests; the selftest engine runs them in this process
through the hooks' run path (forked probe children, which inherit the copy)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from nodecheck.checks import registry
from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import NvmlCanary, Option, check
from nodecheck.core.results import CheckResult, Status
from nodecheck.probes import nvml
from nodecheck.selftest import engine, nvml_data
from nodecheck.selftest.canaries import CANARIES, all_canaries, canary_for, declared
from nodecheck.selftest.report import Report

HOT = NvmlCanary(gpu=2, values={"temperature_c": 91}, says="gpu2: 91 C at idle")
HOT_PINNED = replace(HOT, pin={"expected_limit_w": nvml_data.POWER_LIMIT_W})


def too_hot(cid: str) -> Callable[[CheckContext], Iterator[CheckResult]]:
    """A check `cid` that FAILs a GPU over max_temp_c and, with expected_limit_w, one at
    another power limit (the probe child is forked: it inherits the closure)."""

    def judge(ctx: CheckContext) -> Iterator[CheckResult]:
        limit_w = ctx.options["expected_limit_w"]
        for gpu in nvml.get_snapshot(ctx.settings.nvml).gpus:
            temp, limit_mw = gpu.temperature_c or 0, gpu.power_limit_mw or 0
            if temp > ctx.options["max_temp_c"]:
                yield CheckResult(cid, Status.FAIL, f"{temp} C at idle", gpu.component)
            elif limit_w and limit_mw != limit_w * 1000:
                yield CheckResult(cid, Status.FAIL, f"limit {limit_mw // 1000} W", gpu.component)
            else:
                pinned = f", limit {limit_w} W" if limit_w else ""
                yield CheckResult(cid, Status.PASS, f"{temp} C{pinned}", gpu.component)

    return judge


def pages_pending(cid: str) -> Callable[[CheckContext], Iterator[CheckResult]]:
    """A check `cid` on a field the shared healthy H100 leaves unread (None): its canary's
    `healthy` supplies it."""

    def judge(ctx: CheckContext) -> Iterator[CheckResult]:
        for gpu in nvml.get_snapshot(ctx.settings.nvml).gpus:
            pending = gpu.retired_pages_pending
            if pending is None:
                yield CheckResult(cid, Status.ERROR, "not read", gpu.component)
            else:
                status, text = (Status.FAIL, "retirement") if pending else (Status.PASS, "none")
                yield CheckResult(cid, status, f"{text} pending", gpu.component)

    return judge


HOT_OPTIONS = {
    "max_temp_c": Option(int, 85, "FAIL above this many degrees C"),
    "expected_limit_w": Option(int, 0, "the GPUs' power limit; 0: not judged"),
}


@pytest.fixture
def scratch_registry(monkeypatch, fresh_nvml_cache):
    """The registry as loaded, in a copy that registrations here go to and that is dropped
    after the test."""
    registry.all_checks()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry._REGISTRY


def register(
    cid: str,
    judge: Callable[[str], Callable[[CheckContext], Iterator[CheckResult]]],
    canary: NvmlCanary,
    options: Mapping[str, Option] | None = None,
) -> registry.Check:
    """Register check `cid` (judging as `judge` makes it) with its declared canary."""
    check(cid, summary="declared-canary test", group="gpu", options=options, canary=canary)(
        judge(cid)
    )
    return registry._REGISTRY[cid]


def run_selftest(tmp_path: Path, *patterns: str) -> Report:
    cfg = tmp_path / "nodecheck.toml"
    cfg.write_text(
        f'log_file = "{tmp_path}/nodecheck.log"\nstate_dir = "{tmp_path}/state"\n'
        f'killswitch_file = "{tmp_path}/disabled"\nmetrics_file = ""\n'
        'scontrol = "/bin/false"\nslurm_backend = "scontrol"\n'
    )
    plan = engine.make_plan(str(cfg), {"SLURMD_NODENAME": "n1"}, patterns)
    verdicts = engine.run_plan(plan, "inprocess", time.monotonic() + 60, tmp_path)
    return Report(plan.node, time.time(), 0.0, ("inprocess",), verdicts)


def test_a_declared_canary_is_built_caught_and_passed(tmp_path, scratch_registry):
    chk = register("gpu.declared_hot", too_hot, HOT_PINNED, HOT_OPTIONS)
    canary = canary_for(chk)
    assert canary is not None and canary.check == "gpu.declared_hot"
    good, bad = canary.cases
    assert good.good and not bad.good
    assert (bad.name, bad.component, bad.expect({})) == ("gpu2: 91 C at idle", "gpu2", Status.FAIL)
    assert "gpu.declared_hot" in all_canaries(scratch_registry)

    report = run_selftest(tmp_path, "gpu.declared_hot")
    [verdict] = report.checks
    assert report.ok and verdict.verdict == "ok", verdict
    good_run, bad_run = verdict.cases
    assert good_run.outcome == "passed" and "limit 700 W" in good_run.message  # pinned
    assert bad_run.outcome == "caught" and bad_run.message.startswith("gpu2: 91 C at idle")
    assert bad_run.reason and bad_run.reason.startswith("nodecheck: gpu.declared_hot gpu2")


def test_a_declared_canary_that_is_not_detected_fails_the_selftest(tmp_path, scratch_registry):
    """The check reads the temperature; its canary breaks the PCIe width: the selftest's
    point is to prove detection, so this is a missed bad input, not a pass."""
    blind = NvmlCanary(gpu=4, values={"pcie_width_current": 8}, says="gpu4: PCIe x8")
    register("gpu.declared_blind", too_hot, blind, HOT_OPTIONS)
    report = run_selftest(tmp_path, "gpu.declared_blind")
    [verdict] = report.checks
    assert verdict.verdict == "missed-bad" and not report.ok and report.exit_code == 1
    assert verdict.detail.startswith("gpu4: PCIe x8: PASS")
    assert report.per_check() == {"gpu.declared_blind": False}  # the metric says 0


def test_healthy_fields_reach_every_gpu_of_both_inputs(tmp_path, scratch_registry):
    canary = NvmlCanary(
        gpu=5,
        values={"retired_pages_pending": True},
        says="gpu5: page retirement pending",
        healthy={"retired_pages_pending": False},
    )
    register("gpu.declared_pages", pages_pending, canary)
    snap = nvml_data.declared(canary, bad=True)
    assert [g["retired_pages_pending"] for g in snap["gpus"]] == [False] * 5 + [True, False, False]
    report = run_selftest(tmp_path, "gpu.declared_pages")
    assert [v.verdict for v in report.checks] == ["ok"], report.checks
    # without `healthy` the shared H100 has the field unread: the check cannot judge it
    register("gpu.declared_pages2", pages_pending, replace(canary, healthy={}))
    report = run_selftest(tmp_path, "gpu.declared_pages2")
    assert [v.verdict for v in report.checks] == ["error"]


def test_a_misspelt_field_is_an_error_never_a_pass(tmp_path, scratch_registry):
    typo = NvmlCanary(gpu=1, values={"temperature": 95}, says="gpu1: 95 C")
    register("gpu.declared_typo", too_hot, typo, HOT_OPTIONS)
    report = run_selftest(tmp_path, "gpu.declared_typo")
    [verdict] = report.checks
    assert verdict.verdict == "error" and "unknown keys ['temperature']" in verdict.detail


def test_the_hand_written_canary_wins():
    thermal = registry.all_checks()["gpu.thermal"]
    assert canary_for(replace(thermal, canary=HOT)) is CANARIES["gpu.thermal"]
    assert declared(replace(thermal, canary=HOT)) is not None
    assert declared(thermal) is None  # none declared today: all 17 are hand-written


def test_a_severity_option_makes_the_declared_fault_a_warning_there():
    chk = registry.Check(
        "gpu.declared_sev",
        too_hot("gpu.declared_sev"),
        registry.ALL_PHASES,
        5.0,
        "s",
        {"severity": Option(str, "fail", "")},
        canary=HOT,
    )
    bad = declared(chk).cases[1]
    assert bad.expect({"severity": "warn"}) is Status.WARN and bad.expect({}) is Status.FAIL


def test_a_canary_is_declared_right_or_refused(scratch_registry):
    with pytest.raises(ValueError, match="only a fast check"):
        check("deep.declared", summary="x", tier="deep", canary=HOT)(too_hot("deep.declared"))
    assert "deep.declared" not in scratch_registry
    for bad in ({"gpu": -1}, {"values": {}}, {"says": ""}):
        with pytest.raises(ValueError, match="NvmlCanary needs"):
            replace(HOT, **bad)
    assert HOT.fails_on == "gpu2" and replace(HOT, component="node").fails_on == "node"
    with pytest.raises(ValueError, match="canary gpu 9"):
        nvml_data.declared(replace(HOT, gpu=9), bad=True)
