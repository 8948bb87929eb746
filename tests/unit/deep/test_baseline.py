"""Deep-tier figures against the node's own baseline (checks/trend/baseline.py).

The deep results are made by the deep checks' own judging code (checks/deep/judge.py:
`judge`, `judge_sustained`, `merge_by_component`), in the shapes `nodecheck run --tier
deep --json` shows them (tests/unit/deep/test_checks.py reads the same keys from real CPU
runs), against the H100 SXM row of the expected-figures table (NVIDIA's datasheet,
checks/deep/expected.py). The figures are shares of that datasheet in the range the table's
notes give for healthy parts (cuBLAS GEMM 60-80 %, device copy 85-90 % of HBM, pinned copies
80-85 % of PCIe); the slow ones are those less a stated drop. They go through the real
series store in a temporary state directory; no wall clock is read (each validation's time
is given).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nodecheck.checks.deep import judge
from nodecheck.checks.deep.expected import lookup
from nodecheck.checks.trend import baseline
from nodecheck.checks.trend.baseline import LOW, Limits, judge_figure
from nodecheck.core.reason import parse_reason
from nodecheck.core.results import CheckResult, Status
from nodecheck.quarantine.ladder import Step, ValidationHistory, decide_after_validation
from nodecheck.store.series import Reading, read_only

H100 = lookup("NVIDIA H100 80GB HBM3")
assert H100 is not None
LIMITS = Limits(warn_drop=0.10, fail_drop=0.20, min_runs=3, window_days=180)
DAY = 86400.0
T0 = 1_780_000_000.0  # a fixed epoch: validations are days apart


def _ref(expected: float, fraction: float) -> judge.Reference:
    return judge.Reference(expected, H100.source, fraction, 0.8)


def deep_results(slow: dict[str, float] | None = None, gpus: int = 4) -> list[CheckResult]:
    """One validation's deep.gemm, deep.membw, deep.hostdev and deep.p2p results for an
    H100 SXM node; `slow` takes a share off one GPU's figures ("gpu2": 0.25)."""
    slow = slow or {}

    def share(component: str, healthy: float) -> float:
        return healthy * (1.0 - slow.get(component, 0.0))

    comps = [f"gpu{i}" for i in range(gpus)]
    gemm: list[CheckResult] = []
    for precision, healthy in (("bf16", 0.72), ("tf32", 0.70)):
        expected = H100.tflops[precision]
        figs = [judge.Figure(c, expected * share(c, healthy), values={"size": 8192}) for c in comps]
        gemm += judge.judge("deep.gemm", f"{precision} GEMM", "TFLOP/s", figs, _ref(expected, 0.5))
    held = [judge.Held(c, [share(c, 0.7) * 989.5] * 3, share(c, 0.7) * 989.5, 0.0) for c in comps]
    gemm += judge.judge_sustained(
        "deep.gemm", "bf16 GEMM", "TFLOP/s", held, _ref(989.5, 0.5), max_drop=0.1, seconds=30
    )
    membw = judge.judge(
        "deep.membw",
        "memory copy",
        "GB/s",
        [judge.Figure(c, H100.hbm_gbps * share(c, 0.88)) for c in comps],
        _ref(H100.hbm_gbps, 0.7),
    )
    hostdev: list[CheckResult] = []
    for label in ("host->device", "device->host"):
        figs = [judge.Figure(c, H100.host_gbps * share(c, 0.82)) for c in comps]
        hostdev += judge.judge("deep.hostdev", label, "GB/s", figs, _ref(H100.host_gbps, 0.65))
    pairs = [judge.Figure("gpu0-gpu1", 720.0 * (1.0 - slow.get("gpu0-gpu1", 0.0)))]
    p2p = judge.judge("deep.p2p", "peer copy (both ways)", "GB/s", pairs, _ref(900.0, 0.7))
    return [
        *judge.merge_by_component("deep.gemm", gemm),
        *judge.merge_by_component("deep.membw", membw),
        *judge.merge_by_component("deep.hostdev", hostdev),
        *p2p,
    ]


def validate(state: Path, day: int, slow: dict[str, float] | None = None) -> list[CheckResult]:
    return baseline.compare(state, deep_results(slow), T0 + day * DAY, LIMITS)


def flagged(results: list[CheckResult]) -> dict[tuple[str, str, str], Status]:
    return {
        (r.check_id, r.component, r.values["metric"]): r.status
        for r in results
        if r.status is not Status.PASS
    }


# --- the figures in the deep results' shapes --------------------------------------------


def test_every_measured_gpu_figure_is_found_in_both_result_shapes():
    figures = baseline.figures_of(deep_results())
    series = {(f.series, f.component) for f in figures}
    assert ("deep.gemm:bf16 GEMM", "gpu3") in series
    assert ("deep.gemm:sustained bf16 GEMM", "gpu0") in series
    assert ("deep.gemm:tf32 GEMM", "gpu1") in series
    assert ("deep.membw:memory copy", "gpu2") in series
    assert ("deep.hostdev:device->host", "gpu0") in series
    assert ("deep.p2p:peer copy (both ways)", "gpu0-gpu1") in series
    # 4 GPUs x (3 gemm + 1 membw + 2 hostdev) + 1 pair
    assert len(figures) == 4 * 6 + 1
    bf16 = next(f for f in figures if f.series == "deep.gemm:bf16 GEMM" and f.component == "gpu3")
    assert bf16.value == pytest.approx(989.5 * 0.72, rel=1e-5) and bf16.unit == "TFLOP/s"


def test_a_cpu_stand_in_an_error_and_a_skip_carry_no_figure():
    cpu = judge.merge_by_component(
        "deep.membw",
        judge.judge("deep.membw", "memory copy", "GB/s", [judge.Figure("cpu", 12.5)], _ref(0, 0)),
    )
    missing = judge.judge(
        "deep.membw",
        "memory copy",
        "GB/s",
        [judge.Figure("gpu0", None, "CUDA error: out of memory")],
        _ref(3350, 0.7),
    )
    skipped = judge.refused("deep.gemm", "gpu1", [4242])
    assert cpu[0].values["memory copy"]["measured"] == 12.5  # measured, yet not a GPU's
    assert baseline.figures_of([*cpu, *missing, skipped]) == []


# --- the decision, a table ---------------------------------------------------------------


def past(*values: float, last_low: bool = False) -> list[Reading]:
    out = [Reading(T0 + i * DAY, v) for i, v in enumerate(values)]
    if last_low and out:
        out[-1] = Reading(out[-1].at, out[-1].value, "", LOW)
    return out


@pytest.mark.parametrize(
    ("history", "value", "level", "tag"),
    [
        (past(), 700.0, "young", ""),
        (past(700, 705), 500.0, "young", ""),  # two earlier runs: no baseline yet
        (past(700, 705, 710), 700.0, "ok", ""),
        (past(700, 705, 710), 770.0, "ok", ""),  # faster than usual is no fault
        (past(700, 705, 710), 640.0, "ok", ""),  # 9.2 % below: within warn_drop
        (past(700, 705, 710), 620.0, "warn", ""),  # 12 % below
        (past(700, 705, 710), 540.0, "warn", LOW),  # 23 % below, once: warn, remembered
        (past(700, 705, 710, 540, last_low=True), 540.0, "fail", LOW),  # twice in a row
        (past(700, 705, 710, 540, last_low=True), 690.0, "ok", ""),  # recovered
        (past(700, 705, 710, 540, last_low=True), 620.0, "warn", ""),  # 12 %: not twice past fail
        (past(700, 540, 705, 710), 540.0, "warn", LOW),  # the earlier slow run was not the last
        (past(700, 700, 700, 300, 300), 600.0, "warn", ""),  # the median (mean 540: ok)
        # the last MAX_RUNS validations only (all 22: median 700, 43 % below)
        (past(*[700] * 12, *[400] * 10), 400.0, "ok", ""),
    ],
)
def test_judge_figure(history, value, level, tag):
    verdict = judge_figure(history, value, LIMITS)
    assert (verdict.level, verdict.tag) == (level, tag)


def test_zero_drops_turn_a_level_off():
    off = Limits(warn_drop=0, fail_drop=0, min_runs=3, window_days=180)
    assert judge_figure(past(700, 700, 700, 100, last_low=True), 100.0, off).level == "ok"
    warn_only = Limits(warn_drop=0.1, fail_drop=0, min_runs=3, window_days=180)
    verdict = judge_figure(past(700, 700, 700, 100, last_low=True), 100.0, warn_only)
    assert (verdict.level, verdict.tag) == ("warn", "")


# --- through the real series store -------------------------------------------------------


def test_a_gpu_slow_in_two_validations_in_a_row_fails_and_drains_with_the_trend_reason(
    tmp_path: Path,
):
    for day in range(3):  # the baseline: three healthy validations
        assert flagged(validate(tmp_path, day)) == {}
    first = validate(tmp_path, 3, {"gpu2": 0.25})
    assert set(flagged(first).values()) == {Status.WARN}  # once is not a trend
    assert {k[1] for k in flagged(first)} == {"gpu2"}
    second = validate(tmp_path, 4, {"gpu2": 0.25})
    fails = [r for r in second if r.status is Status.FAIL]
    assert {(r.check_id, r.component) for r in fails} == {
        ("trend.deep_gemm", "gpu2"),
        ("trend.deep_membw", "gpu2"),
        ("trend.deep_hostdev", "gpu2"),
    }
    bf16 = next(r for r in fails if r.values["metric"] == "bf16 GEMM")
    assert bf16.values["drop"] == pytest.approx(0.25, abs=1e-3)
    assert bf16.values["baseline"] == pytest.approx(989.5 * 0.72, rel=1e-4)
    # Through the escalation ladder as validate-job hands it: the validation drains.
    decision = decide_after_validation(
        [*deep_results({"gpu2": 0.25}), *fails], ValidationHistory(0, False), ("drain",), "41"
    )
    assert decision.step is Step.DRAIN
    assert decision.reason.startswith("nodecheck: trend deep.")
    assert " gpu2: " in decision.reason and "twice in a row" in decision.reason
    parsed = parse_reason(decision.reason)
    assert parsed is not None and parsed.check_id.startswith("trend.deep_")


def test_one_slow_validation_between_good_ones_never_fails(tmp_path: Path):
    for day in range(3):
        validate(tmp_path, day)
    assert Status.WARN in flagged(validate(tmp_path, 3, {"gpu1": 0.3})).values()
    assert flagged(validate(tmp_path, 4)) == {}  # back to its usual figures
    again = validate(tmp_path, 5, {"gpu1": 0.3})
    assert set(flagged(again).values()) == {Status.WARN}


def test_a_slow_nvlink_pair_is_judged_as_a_pair(tmp_path: Path):
    for day in range(3):
        validate(tmp_path, day)
    validate(tmp_path, 3, {"gpu0-gpu1": 0.4})
    got = flagged(validate(tmp_path, 4, {"gpu0-gpu1": 0.4}))
    assert got == {("trend.deep_p2p", "gpu0-gpu1", "peer copy (both ways)"): Status.FAIL}


def test_each_validation_is_kept_per_gpu_and_figure_and_old_ones_age_out(tmp_path: Path):
    validate(tmp_path, 0)
    validate(tmp_path, 1)
    kept = read_only(tmp_path, "deep.gemm:bf16 GEMM", 0.0)
    assert sorted(kept) == ["gpu0", "gpu1", "gpu2", "gpu3"]
    assert [r.at for r in kept["gpu3"]] == [T0, T0 + DAY]
    # 200 days later (window 180): the old ones are not a baseline, and they are pruned.
    young = validate(tmp_path, 201, {"gpu0": 0.5})
    assert flagged(young) == {}
    assert {r.values["level"] for r in young} == {"young"}
    assert [r.at for r in read_only(tmp_path, "deep.gemm:bf16 GEMM", 0.0)["gpu0"]] == [
        T0 + 201 * DAY
    ]


def test_validation_settings_have_defaults_and_ranges(tmp_path: Path):
    from nodecheck.checks.registry import all_checks
    from nodecheck.run.config import load_config
    from nodecheck.run.config_file import ConfigError

    def load(text: str):
        path = tmp_path / "nodecheck.toml"
        path.write_text(text)
        return load_config(str(path), {}, all_checks())

    values = load("").values
    assert values["validate_baseline"] is True
    assert (values["validate_baseline_warn_drop"], values["validate_baseline_fail_drop"]) == (
        0.10,
        0.20,
    )
    assert load("validate_baseline_fail_drop = 0.3\n").values["validate_baseline_fail_drop"] == 0.3
    for bad in ("validate_baseline_fail_drop = 1.5", "validate_baseline_min_runs = 0"):
        with pytest.raises(ConfigError):
            load(bad + "\n")


# --- the step of validate-job ------------------------------------------------------------


def test_validate_job_step_stores_judges_and_can_be_turned_off(tmp_path: Path):
    """quarantine/job.py `_own_baseline`: the config's settings, the state directory the job
    uses, only WARN/FAIL handed on; turned off, nothing is judged or kept."""
    from nodecheck.checks.registry import all_checks
    from nodecheck.quarantine.job import _own_baseline
    from nodecheck.run.config import load_config

    def config(extra: str = ""):
        path = tmp_path / "nodecheck.toml"
        path.write_text(f'state_dir = "{tmp_path / "state"}"\n{extra}')
        return load_config(str(path), {}, all_checks())

    off = config("validate_baseline = false\n")
    assert _own_baseline(off, off.state_dir_for("n1"), deep_results()) == []
    assert not (tmp_path / "state").exists()
    on = config()
    state = on.state_dir_for("n1")
    state.mkdir(mode=0o700)
    for _ in range(3):
        assert _own_baseline(on, state, deep_results()) == []
    first = _own_baseline(on, state, deep_results({"gpu3": 0.3}))
    assert {r.status for r in first} == {Status.WARN}
    second = _own_baseline(on, state, deep_results({"gpu3": 0.3}))
    assert {(r.status, r.component) for r in second} == {(Status.FAIL, "gpu3")}
    assert len(read_only(state, "deep.membw:memory copy", 0.0)["gpu3"]) == 5


def test_validate_job_step_with_an_unusable_state_file_judges_nothing(tmp_path: Path):
    """The state directory is a plain file: logged, no result (our problem is never the
    node's: no FAIL, and no ERROR that would hold the validation back)."""
    from nodecheck.checks.registry import all_checks
    from nodecheck.quarantine.job import _own_baseline
    from nodecheck.run.config import load_config

    (tmp_path / "nodecheck.toml").write_text(f'state_dir = "{tmp_path / "state"}"\n')
    cfg = load_config(str(tmp_path / "nodecheck.toml"), {}, all_checks())
    (tmp_path / "state").write_text("not a directory")
    assert _own_baseline(cfg, cfg.state_dir_for("n1"), deep_results({"gpu0": 0.5})) == []
