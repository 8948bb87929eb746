"""The deep tier's judgement, table-tested with measured-figure inputs (no torch, no GPU)."""

from __future__ import annotations

import pytest

from nodecheck.checks.deep import expected, judge
from nodecheck.core.results import Status

H100_BF16 = expected.lookup("NVIDIA H100 80GB HBM3").tflops["bf16"]


def ref(expected_value, min_fraction=0.6, median_fraction=0.8, source="H100 SXM datasheet"):
    return judge.Reference(expected_value, source, min_fraction, median_fraction)


def statuses(results):
    return {r.component: r.status for r in results}


def test_every_model_the_brief_names_is_in_the_table_with_a_source():
    for name in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200", "NVIDIA B200",
                 "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"):  # fmt: skip
        spec = expected.lookup(name)
        assert spec is not None, name
        assert "datasheet" in spec.source
        assert all(spec.tflops[p] > 0 for p in ("bf16", "fp16", "tf32"))
        assert spec.hbm_gbps > 1000 and spec.host_gbps in (32, 64)
    assert expected.lookup("nvidia h200 ") is expected.lookup("NVIDIA H200")
    assert expected.lookup("Tesla V100-PCIE-32GB") is None


def test_model_in_table_below_its_fraction_fails_naming_the_figure():
    figures = [judge.Figure(f"gpu{i}", 700.0) for i in range(7)] + [judge.Figure("gpu7", 412.0)]
    results = judge.judge("deep.gemm", "bf16 GEMM", "TFLOP/s", figures, ref(H100_BF16))
    assert statuses(results) == {**{f"gpu{i}": Status.PASS for i in range(7)}, "gpu7": Status.FAIL}
    bad = next(r for r in results if r.component == "gpu7")
    assert bad.message == ("bf16 GEMM 412 TFLOP/s = 42% of 990 (H100 SXM datasheet), below 60%")
    assert bad.values["measured"] == 412.0 and bad.values["expected"] == H100_BF16


def test_whole_node_below_the_datasheet_fails_every_gpu_even_when_they_agree():
    figures = [judge.Figure(f"gpu{i}", 300.0) for i in range(8)]
    results = judge.judge("deep.gemm", "bf16 GEMM", "TFLOP/s", figures, ref(H100_BF16))
    assert set(statuses(results).values()) == {Status.FAIL}


def test_unknown_model_one_slow_gpu_among_eight_is_named_by_the_median():
    values = [101.0, 99.5, 100.2, 98.7, 100.9, 62.0, 99.9, 100.4]
    figures = [judge.Figure(f"gpu{i}", v) for i, v in enumerate(values)]
    results = judge.judge(
        "deep.membw", "memory copy", "GB/s", figures, ref(None, source="X not in the table")
    )
    assert [r.component for r in results if r.status is Status.FAIL] == ["gpu5"]
    slow = next(r for r in results if r.component == "gpu5")
    assert "of the node's median" in slow.message and "below 80%" in slow.message
    assert slow.values["node_median"] == pytest.approx(100.05)


def test_two_devices_of_an_unknown_model_cannot_name_one():
    figures = [judge.Figure("gpu0", 100.0), judge.Figure("gpu1", 10.0)]
    results = judge.judge("deep.membw", "copy", "GB/s", figures, ref(None, source="unknown"))
    assert set(statuses(results).values()) == {Status.PASS}
    assert "too few devices" in results[1].message


def test_a_device_that_could_not_be_measured_is_an_error_not_a_failure():
    figures = [judge.Figure("gpu0", None, error="CUBLAS_STATUS_NOT_SUPPORTED")]
    [result] = judge.judge("deep.gemm", "fp16 GEMM", "TFLOP/s", figures, ref(H100_BF16))
    assert result.status is Status.ERROR
    assert "CUBLAS_STATUS_NOT_SUPPORTED" in result.message


def test_metrics_of_one_gpu_merge_into_its_worst():
    parts = judge.judge("deep.gemm", "bf16 GEMM", "TFLOP/s", [judge.Figure("gpu0", 700.0)],
                        ref(H100_BF16)) + judge.judge(
        "deep.gemm", "tf32 GEMM", "TFLOP/s", [judge.Figure("gpu0", 100.0)], ref(494.5))  # fmt: skip
    [merged] = judge.merge_by_component("deep.gemm", parts)
    assert merged.status is Status.FAIL
    assert merged.message.startswith("tf32 GEMM 100 TFLOP/s")
    assert set(merged.values) == {"bf16 GEMM", "tf32 GEMM"}


def test_a_busy_gpu_is_refused_not_failed():
    result = judge.refused("deep.gemm", "gpu2", [4242, 4243])
    assert result.status is Status.SKIP
    assert "pids 4242, 4243" in result.message and result.values["refused"] is True


def outcome(component, *digests, model="NVIDIA H100 80GB HBM3"):
    return judge.Outcome(component, model, digests)


def test_sdc_one_gpu_disagreeing_with_the_majority_fails_alone():
    outcomes = [outcome(f"gpu{i}", "aa", "aa") for i in range(7)] + [outcome("gpu7", "ab", "ab")]
    results = judge.judge_digests(outcomes)
    assert [r.component for r in results if r.status is Status.FAIL] == ["gpu7"]
    assert "differs from the other 7" in results[-1].message


def test_sdc_repeats_that_differ_fail_that_gpu():
    results = judge.judge_digests([outcome("gpu0", "aa", "aa"), outcome("gpu1", "aa", "ff"),
                                   outcome("gpu2", "aa", "aa")])  # fmt: skip
    assert statuses(results) == {"gpu0": Status.PASS, "gpu1": Status.FAIL, "gpu2": Status.PASS}
    assert "changed between repeats" in results[1].message


def test_sdc_two_gpus_that_disagree_both_fail_and_models_are_compared_apart():
    results = judge.judge_digests([
        outcome("gpu0", "aa"), outcome("gpu1", "bb"),
        outcome("gpu2", "cc", model="NVIDIA A100-SXM4-80GB"),
    ])  # fmt: skip
    assert statuses(results) == {"gpu0": Status.FAIL, "gpu1": Status.FAIL, "gpu2": Status.PASS}
