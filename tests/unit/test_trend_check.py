"""trend_check: the one place the trend checks' shared registration lives."""

from __future__ import annotations

import pytest

from nodecheck.checks import registry
from nodecheck.checks.registry import Option, all_checks
from nodecheck.checks.trend import common


def test_every_trend_check_carries_the_shared_registration():
    trends = {cid: c for cid, c in all_checks().items() if cid.startswith("trend.")}
    assert trends
    for c in trends.values():
        assert c.phases == frozenset(common.PHASES)
        assert (c.severity, c.remedy) == (common.SEVERITY, common.REMEDY)
        assert c.enabled_by_default is False


@pytest.fixture
def scratch_id():
    cid = "trend.scratch_for_test"
    yield cid
    registry._REGISTRY.pop(cid, None)


def test_trend_check_registers_its_own_fields(scratch_id):
    opts = {"window_h": Option((int, float), 2.0, "hours")}

    @common.trend_check(scratch_id, summary="a scratch trend", options=opts, group="g")
    def scratch(ctx):
        """What it watches."""
        return iter(())

    got = registry._REGISTRY[scratch_id]
    assert got.func is scratch
    assert (got.summary, got.group, got.timeout_s) == ("a scratch trend", "g", common.TIMEOUT_S)
    assert dict(got.options) == opts
    assert got.explain == "What it watches."
    assert got.phases == frozenset(common.PHASES) and not got.enabled_by_default


def test_trend_check_takes_its_own_timeout(scratch_id):
    common.trend_check(scratch_id, summary="s", options={}, timeout_s=3.0)(lambda ctx: iter(()))
    assert registry._REGISTRY[scratch_id].timeout_s == 3.0
    assert registry._REGISTRY[scratch_id].group is None
