"""The deep tier in the registry, the runner and the check selection."""

from __future__ import annotations

import resource
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import make_check, make_ctx

from nodecheck.checks.registry import (
    DEEP_MARGIN_S,
    Check,
    all_checks,
    check,
    in_tier,
    run_budget_s,
)
from nodecheck.core.results import CheckResult, Status
from nodecheck.run.config import parse_config
from nodecheck.run.config_file import ConfigError
from nodecheck.run.pipeline import UsageError, select_checks
from nodecheck.run.runner import Planned, run_checks

DEEP_IDS = {
    "deep.dcgm",
    "deep.fabric",
    "deep.gemm",
    "deep.hostdev",
    "deep.ibperf",
    "deep.membw",
    "deep.nccl",
    "deep.p2p",
    "deep.sdc",
}


def deep(chk: Check, memory_limit_mb: int | None = None) -> Check:
    return replace(chk, tier="deep", memory_limit_mb=memory_limit_mb)


def parse(toml_text: str):
    return parse_config(tomllib.loads(toml_text), Path("test.toml"), all_checks())


def node_config(toml_text: str = ""):
    registry = all_checks()
    return parse(toml_text).for_node("n1", registry), registry


def test_every_deep_check_is_registered_in_the_deep_tier_and_no_other_check_is():
    registry = all_checks()
    assert set(in_tier(registry, "deep")) == DEEP_IDS
    fast = in_tier(registry, "fast")
    assert fast and not set(fast) & DEEP_IDS
    assert in_tier(registry, None) == registry
    with pytest.raises(KeyError):
        in_tier(registry, "slow")


def test_deep_checks_run_only_by_hand_unless_configured():
    nodecfg, registry = node_config()
    for phase in ("prolog", "epilog", "health"):
        ids = {c.id for c in select_checks(registry, nodecfg, phase, ())}
        assert ids and not ids & DEEP_IDS, phase
    manual_fast = {c.id for c in select_checks(registry, nodecfg, "manual", (), "fast")}
    assert manual_fast and not manual_fast & DEEP_IDS
    assert {c.id for c in select_checks(registry, nodecfg, "manual", (), "deep")} == DEEP_IDS


def test_a_site_can_put_a_deep_check_into_the_epilog():
    nodecfg, registry = node_config('[checks."deep.dcgm"]\nphases = ["epilog"]\nlevel = 1\n')
    epilog = {c.id for c in select_checks(registry, nodecfg, "epilog", ())}
    assert epilog & DEEP_IDS == {"deep.dcgm"}
    prolog = {c.id for c in select_checks(registry, nodecfg, "prolog", ())}
    assert not prolog & DEEP_IDS


def test_patterns_match_within_the_tier_asked_for():
    nodecfg, registry = node_config()
    chosen = select_checks(registry, nodecfg, "manual", ("deep.g*", "deep.sdc"), "deep")
    assert [c.id for c in chosen] == ["deep.gemm", "deep.sdc"]
    with pytest.raises(UsageError, match=r"no check matches 'deep\.gemm' in tier fast"):
        select_checks(registry, nodecfg, "manual", ("deep.gemm",), "fast")
    with pytest.raises(UsageError, match="unknown tier 'slow'"):
        select_checks(registry, nodecfg, "manual", (), "slow")


def test_registration_refuses_an_unknown_tier_and_a_negative_memory_limit():
    with pytest.raises(ValueError, match="unknown tier"):
        check("t.tier", summary="x", tier="medium")(lambda ctx: [])
    with pytest.raises(ValueError, match="memory_limit_mb must be >= 0"):
        check("t.mem", summary="x", memory_limit_mb=-1)(lambda ctx: [])


def test_the_run_budget_fits_the_deep_checks():
    fast = make_check("t.fast", lambda ctx: [], timeout_s=5)
    gemm = deep(make_check("t.gemm", lambda ctx: [], timeout_s=180))
    sdc = deep(make_check("t.sdc", lambda ctx: [], timeout_s=120))
    assert run_budget_s("manual", [(fast, 5)], 20, 0) == 20
    # Deep checks run one after another: the sum, plus the margin, unless configured.
    planned = [(fast, 5), (gemm, 180), (sdc, 60)]
    assert run_budget_s("manual", planned, 20, 0) == 240 + DEEP_MARGIN_S
    assert run_budget_s("manual", [(gemm, 180)], 20, 900) == 900
    assert run_budget_s("manual", [(gemm, 1)], 20, 0) == 20  # never below the fast budget
    # A hook keeps the site's budget (matched to Slurm's timeouts), deep checks or not.
    assert run_budget_s("epilog", planned, 20, 0) == 20


def test_deep_budget_and_deep_timeouts_are_validated():
    with pytest.raises(ConfigError, match="deep_budget_s must be in"):
        parse("deep_budget_s = -1\n")
    # A deep check may get more than a fast check's 600 s (dcgmi diag -r 3), not unbounded.
    parse('[checks."deep.dcgm"]\ntimeout_s = 3600\n')
    with pytest.raises(ConfigError, match=r"timeout_s must be in \(0, 600\]"):
        parse('[checks."gpu.count"]\ntimeout_s = 3600\n')
    with pytest.raises(ConfigError, match=r"timeout_s must be in \(0, 86400\]"):
        parse('[checks."deep.dcgm"]\ntimeout_s = 100000\n')


def report_limit(ctx):
    """The address-space limit this probe child runs under, as the child sees it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    mb = None if soft == resource.RLIM_INFINITY else soft // 1024**2
    yield CheckResult(ctx.options["id"], Status.PASS, "limit", values={"mb": mb})


def test_a_check_declares_its_own_memory_limit_for_its_child():
    planned = []
    for cid, own in (("t.run", None), ("t.none", 0), ("t.big", 1536)):
        chk = replace(make_check(cid, report_limit), memory_limit_mb=own)
        planned.append(Planned(chk, make_ctx(options={"id": cid}), 10))
    results = run_checks(planned, budget_s=20, memory_limit_mb=512)
    assert [r.status for r in results] == [Status.PASS] * 3, results
    limits = {r.check_id: r.values["mb"] for r in results}
    assert limits == {"t.run": 512, "t.none": None, "t.big": 1536}


def test_a_group_lives_for_the_sum_of_its_checks_timeouts():
    """Two checks of one group, each well within its own 2 s, together past the longest:
    neither tier's group is cut there (issue 13: a later check was cut as "probe hung")."""
    import time

    def measures(ctx):
        time.sleep(1.2)
        yield CheckResult(ctx.options["id"], Status.PASS, "measured")

    def group(tier):
        return [
            Planned(
                replace(make_check(cid, measures, group="g"), tier=tier),
                make_ctx(options={"id": cid}),
                2.0,
            )
            for cid in ("t.first", "t.second")
        ]

    assert [r.status for r in run_checks(group("deep"), budget_s=10)] == [Status.PASS] * 2
    assert [r.status for r in run_checks(group("fast"), budget_s=10)] == [Status.PASS] * 2
