"""NVLink5's per-link bit error rates (NVML_FI_DEV_NVLINK_COUNT_EFFECTIVE_BER 220,
NVML_FI_DEV_NVLINK_COUNT_SYMBOL_BER 222): the packed value decoded, read by the collector with
the NVLink5 counters, and reported by gpu.nvlink with a report-only WARN over DCGM's limit.

Documented examples: NVIDIA/DCGM's BER field-injection test pairs raw values with the float
DCGM decodes (mantissa = bits 8-11, exponent = bits 0-7, BER = mantissa x 10^-exponent), and
its DcgmUtilitiesTests put the effective-BER limit between 1e-12 (within) and 1.1e-12 (over).
"""

from __future__ import annotations

import json

import pytest
import test_gpu_nvlink
from helpers import NVML_FIXTURES
from test_gpu_adapter import FakeNvml, _collect_with

from nodecheck.probes.nvml import model
from nodecheck.probes.nvml.model import Snapshot

pytestmark = pytest.mark.usefixtures("fresh_nvml_cache")

FLOOR = 0xFFF  # mantissa 15, exponent 255: the smallest value, what an error-free link reports


@pytest.mark.parametrize(
    ("raw", "ber"),
    [
        (4095, 15.0 * 10.0**-255),
        (0, 0.0),
        (1000, 3.0 * 10.0**-232),
        (1025, 4.0 * 10.0**-1),
        (2048, 8.0),
        (3072, 12.0),
        (513, 2.0 * 10.0**-1),
    ],
)
def test_decode_ber_as_dcgm_does(raw, ber):
    assert model.decode_ber(raw) == pytest.approx(ber, rel=1e-12)


def test_ber_field_ids_match_pynvml():
    pynvml = pytest.importorskip("pynvml")
    assert model.NVLINK_BER_FIELDS == {
        "effective": pynvml.NVML_FI_DEV_NVLINK_COUNT_EFFECTIVE_BER,
        "symbol": pynvml.NVML_FI_DEV_NVLINK_COUNT_SYMBOL_BER,
    }
    assert (model.PERF_POLICY_POWER, model.PERF_POLICY_THERMAL) == (
        pynvml.NVML_PERF_POLICY_POWER,
        pynvml.NVML_PERF_POLICY_THERMAL,
    )


def gb200(tmp_path, worst: int | None = None) -> tuple[dict, object]:
    """The modelled GB200 with both BERs at the floor on every link; `worst` on gpu2 link 5."""
    data = json.loads((NVML_FIXTURES / "gb200-healthy.json").read_text())
    for gpu in data["gpus"]:
        for link in gpu["nvlinks"]:
            link["ber"] = {"effective": FLOOR, "symbol": FLOOR}
    if worst is not None:
        data["gpus"][2]["nvlinks"][5]["ber"]["effective"] = worst
    path = tmp_path / f"gb200-ber-{worst}.json"
    path.write_text(json.dumps(data))
    return data, path


def test_collector_reads_ber_with_the_nvlink5_counters(monkeypatch, tmp_path):
    data, _ = gb200(tmp_path, worst=0x20C)
    data["gpus"][0]["thermal_violation"] = {
        "referenceTime": 1_780_000_000_000_000,
        "violationTime": 7,
    }
    snap = Snapshot.from_dict(data)
    got = _collect_with(monkeypatch, FakeNvml(snap))
    assert got.gpus[2].nvlinks == snap.gpus[2].nvlinks
    assert got.gpus[2].nvlinks[5].ber == {"effective": 0x20C, "symbol": FLOOR}
    assert got.gpus[0].thermal_violation == model.ViolationTime(1_780_000_000_000_000, 7)
    assert got.gpus[0].power_violation is None and "power_violation" not in got.gpus[0].errors


def test_effective_ber_over_dcgms_limit_warns_report_only(tmp_path):
    _, path = gb200(tmp_path, worst=0x20C)  # 2e-12: over 1e-12
    got = test_gpu_nvlink.judge(path, tmp_path / "state")
    assert ("WARN", "gpu2", "NVLink 5 effective BER 2.0e-12 (over 1e-12)") in [
        (s.name, c, m) for s, c, m in got
    ]
    assert all(s.name == "PASS" for s, c, _ in got if c != "gpu2")


def test_ber_at_the_limit_passes_and_is_reported(tmp_path):
    from helpers import make_ctx, options_of

    _, path = gb200(tmp_path, worst=0x10C)  # 1e-12: within
    ctx = make_ctx(
        options=options_of(test_gpu_nvlink.CHECK),
        nvml=f"replay:{path}",
        state_dir=tmp_path / "state",
    )
    (passed,) = test_gpu_nvlink.CHECK.func(ctx)  # every GPU passed: one result for all
    assert passed.status.name == "PASS" and passed.component == "gpu0-3"
    assert passed.values["gpu2"]["effective_ber"] == pytest.approx(1e-12)
    assert passed.values["gpu0"]["symbol_ber"] == pytest.approx(1.5e-254)


def test_hopper_reports_no_ber(tmp_path):
    got = test_gpu_nvlink.judge(NVML_FIXTURES / "h100-healthy.json", tmp_path / "state")
    assert all(s.name == "PASS" for s, _, _ in got)
