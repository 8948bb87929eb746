"""gpu.nvlink on parts whose links NVML reports differently from an HGX H100: bridged PCIe
GPUs with unwired links (a published `nvidia-smi nvlink -s`), Blackwell's NVLink5 counters
through the field values, and GPUs whose counters cannot be read at all."""

import json
from pathlib import Path

import pytest
import smi_nvlink
from helpers import NVML_FIXTURES, make_ctx, options_of

from nodecheck.checks import gpu  # noqa: F401  (registers the gpu family)
from nodecheck.checks.registry import all_checks
from nodecheck.core.results import Status
from nodecheck.probes import nvml
from nodecheck.run.report_only import ReportOnly
from nodecheck.run.report_only import report_only as apply_report_only

CHECK = all_checks()["gpu.nvlink"]
SMI = Path(__file__).parents[1] / "fixtures" / "real" / "nvidia-smi"
NOT_SUPPORTED = {"code": 3, "name": "NVML_ERROR_NOT_SUPPORTED", "message": "Not Supported"}

pytestmark = pytest.mark.usefixtures("fresh_nvml_cache")


def judge(path: Path, state: Path, phase: str = "prolog", report_only=None, **options):
    """The check's results as a run judges them: the site's `report_only` (None: not set)
    applied to its new signals (run/report_only.py)."""
    nvml.clear_cache()
    ctx = make_ctx(
        phase=phase,
        options=options_of(CHECK, **options),
        nvml=f"replay:{path}",
        state_dir=state,
    )
    rules = {CHECK.id: ReportOnly.resolve(report_only, CHECK.new_signals)}
    return [(r.status, r.component, r.message) for r in apply_report_only(CHECK.func(ctx), rules)]


def h100_pcie_pair(tmp_path: Path, down: tuple[int, ...] = ()) -> Path:
    """Two H100 PCIe joined by NVLink bridges, their links as `nvidia-smi nvlink -s` shows
    them (12 of 18 active on a healthy pair); `down` links of GPU 0 inactive as well."""
    data = json.loads((NVML_FIXTURES / "h100-healthy.json").read_text())
    published = smi_nvlink.load(SMI / "h100-pcie-nvlink-bridge-555-nvlink-s.txt")
    data["driver_version"], data["device_count"] = "555.42.02", 2
    data["gpus"] = data["gpus"][:2]
    for index, board in enumerate(data["gpus"]):
        board["name"] = "NVIDIA H100 PCIe"
        for link in board["nvlinks"]:
            active = published[index].active[link["link"]] and not (
                index == 0 and link["link"] in down
            )
            link["active"] = active
            link["counters"] = link["counters"] if active else {}
    path = tmp_path / f"h100-pcie-{'-'.join(map(str, down)) or 'healthy'}.json"
    path.write_text(json.dumps(data))
    return path


def test_unwired_links_of_a_bridged_pcie_pair_are_not_down(tmp_path):
    """NVML reports the 6 unwired links of each H100 PCIe as inactive (and says "Link is
    supported: false" of the wired ones too), so only history tells a failed link apart."""
    state = tmp_path / "state"
    healthy = h100_pcie_pair(tmp_path)
    for _ in range(2):  # the first reading and every later one
        [result] = judge(healthy, state)
        assert result == (
            Status.PASS,
            "gpu0,1",
            "2 GPUs: 12 NVLinks active (6 inactive, never seen active)",
        )
    # a wired link that was active at the last run goes down: that is a failure, and stays
    # one at the next runs (the health run must not resume the drain while it is down)
    down = h100_pcie_pair(tmp_path, down=(2,))
    for _ in range(2):
        assert (Status.FAIL, "gpu0", "NVLink 2 down (11/18 active)") in judge(down, state)
    assert judge(healthy, state)[0][0] is Status.PASS  # repaired


def test_expected_active_judges_the_count_without_history(tmp_path):
    state = tmp_path / "state"
    assert judge(h100_pcie_pair(tmp_path), state, expected_active=12)[0][0] is Status.PASS
    results = judge(h100_pcie_pair(tmp_path, down=(2,)), state, expected_active=12)
    message = "11 NVLinks active (expected 12); down: 2,4,5,10,11,16,17"
    assert (Status.FAIL, "gpu0", message) in results


def test_a_manual_run_judges_history_without_writing_any(tmp_path):
    state = tmp_path / "state"
    judge(h100_pcie_pair(tmp_path), state)  # a hook run: the baseline
    down = h100_pcie_pair(tmp_path, down=(3,))
    for _ in range(2):
        assert (Status.FAIL, "gpu0", "NVLink 3 down (11/18 active)") in judge(
            down, state, phase="manual"
        )


def _blackwell(tmp_path: Path, **link3: int) -> Path:
    """gpu0 as Blackwell reports it: no legacy counter, the NVLink5 ones per link."""
    data = json.loads((NVML_FIXTURES / "h100-healthy.json").read_text())
    for link in data["gpus"][0]["nvlinks"]:
        link["counters"] = {"link_recovery_failed": 0, "effective_errors": 0, "symbol_errors": 9}
        if link["link"] == 3:
            link["counters"].update(link3)
        names = ("replay", "recovery", "crc_flit", "crc_data", "ecc_data", "rx_errors")
        link["errors"] = dict.fromkeys(names, NOT_SUPPORTED)
    path = tmp_path / f"blackwell-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(data))
    return path


def test_nvlink5_counters_rising_warn_until_a_site_makes_them_fail(tmp_path):
    state = tmp_path / "state"
    assert judge(_blackwell(tmp_path), state)[0][0] is Status.PASS
    rising = _blackwell(tmp_path, link_recovery_failed=2)
    assert judge(rising, state, phase="manual") == [
        (
            Status.WARN,
            "gpu0",
            "report-only: NVLink 3 link_recovery_failed errors +2 since last run",
        ),
        (Status.PASS, "gpu1-7", "7 GPUs: 18 NVLinks active"),
    ]
    [failed, _] = judge(rising, state, phase="manual", report_only=[])
    assert failed[0] is Status.FAIL
    # the site enables every new signal of the check: the same rise drains
    assert judge(rising, state, phase="manual", report_only=False)[0][0] is Status.FAIL
    # a legacy counter rising beside a new one is not report-only: it drains
    judge(_blackwell(tmp_path, recovery=0), state)  # a hook run keeps a baseline with it
    mixed = _blackwell(tmp_path, link_recovery_failed=4, recovery=1)
    assert judge(mixed, state, phase="manual")[0][0] is Status.FAIL
    # symbol errors are corrected by FEC: a rise far under the default allowance passes
    assert judge(_blackwell(tmp_path, symbol_errors=5000), state)[0][0] is Status.PASS


def test_no_counter_at_all_is_a_warning(tmp_path):
    data = json.loads((NVML_FIXTURES / "h100-healthy.json").read_text())
    for link in data["gpus"][5]["nvlinks"]:
        link["counters"] = {}
        link["errors"] = {"replay": NOT_SUPPORTED, "link_recovery_failed": NOT_SUPPORTED}
    path = tmp_path / "no-counters.json"
    path.write_text(json.dumps(data))
    assert (
        Status.WARN,
        "gpu5",
        "18 NVLinks active; no NVLink error counter readable (NVML_ERROR_NOT_SUPPORTED)",
    ) in judge(path, tmp_path / "state")


def test_unknown_counter_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown counters"):
        judge(_blackwell(tmp_path), tmp_path / "state", max_increase={"flits": 3})
