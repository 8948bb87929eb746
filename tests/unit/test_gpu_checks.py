"""Every gpu.* NVML check against the replay fixtures: status, component and message."""

import json
import shutil
from pathlib import Path

import pytest
from helpers import NVML_FIXTURES, make_ctx, nvml_check_ids, options_of

from nodecheck.checks import gpu  # noqa: F401  (registers the gpu family)
from nodecheck.checks.context import JobInfo
from nodecheck.checks.registry import all_checks
from nodecheck.core.results import Status
from nodecheck.probes import nvml

REGISTRY = all_checks()
NVML_CHECKS = nvml_check_ids(REGISTRY)


pytestmark = pytest.mark.usefixtures("fresh_nvml_cache")


@pytest.fixture
def state_dir(tmp_path):
    return tmp_path / "state"


def run(check_id, fixture, phase="prolog", job=None, state_dir=None, procfs=None, **options):
    chk = REGISTRY[check_id]
    source = fixture if str(fixture).startswith("replay:") else f"replay:{NVML_FIXTURES / fixture}"
    ctx = make_ctx(
        phase=phase,
        options=options_of(chk, **options),
        job=job,
        nvml=source,
        state_dir=state_dir or Path("/nonexistent-state"),
        procfs_root=procfs or Path("/proc"),
    )
    return list(chk.func(ctx))


def problems(results):
    return [(r.status, r.component, r.message) for r in results if r.status is not Status.PASS]


def only(results, status=Status.PASS):
    assert [r.status for r in results] == [status], [(r.status, r.message) for r in results]
    return results[0]


def test_family_is_registered_in_group_gpu():
    assert "gpu.count" in REGISTRY and "gpu.xid" in REGISTRY
    for cid in NVML_CHECKS:
        assert REGISTRY[cid].group == "gpu", cid
    assert REGISTRY["gpu.xid"].group is None  # must work while NVML hangs
    assert REGISTRY["gpu.idle"].phases == frozenset({"epilog"})
    assert "epilog" not in REGISTRY["gpu.thermal"].phases


@pytest.mark.parametrize("check_id", NVML_CHECKS)
def test_healthy_h100_node_passes_everything(check_id, state_dir):
    results = run(
        check_id,
        "h100-healthy.json",
        phase="epilog",
        state_dir=state_dir,
        **({"settle_s": 0} if check_id == "gpu.idle" else {}),
    )
    assert problems(results) == []
    assert results, check_id


def test_passes_fold_into_one_result_naming_the_gpus():
    [r] = run("gpu.remap", "h100-healthy.json")
    assert r.component == "gpu0-7" and r.message == "8 GPUs: no row remap pending"
    assert set(r.values) == {f"gpu{i}" for i in range(8)}
    [r] = run("gpu.thermal", "h100-healthy.json")
    assert r.message == "8 GPUs: 31-34C at idle"


# --- gpu.count ------------------------------------------------------------------------


def test_count_pass():
    r = only(run("gpu.count", "h100-healthy.json", expected=8))
    assert r.message == "8 GPUs visible" and r.values["visible"] == 8


def test_count_missing_gpu_names_the_bus_id():
    healthy = nvml.get_snapshot(f"replay:{NVML_FIXTURES / 'h100-healthy.json'}")
    ids = [g.pci_bus_id for g in healthy.gpus]
    r = only(run("gpu.count", "h100-missing-gpu.json", expected=8, pci_bus_ids=ids), Status.FAIL)
    assert r.component == "node"
    assert r.message == "7 GPUs visible (expected 8); missing 00000000:DB:00.0"


def test_count_missing_gpu_without_bus_ids():
    r = only(run("gpu.count", "h100-missing-gpu.json", expected=8), Status.FAIL)
    assert r.message == "7 GPUs visible (expected 8)"


def test_count_more_than_expected_warns():
    r = only(run("gpu.count", "h100-healthy.json", expected=4), Status.WARN)
    assert r.message.startswith("8 GPUs visible (expected 4")


def test_count_lost_gpu_fails_naming_it():
    r = only(run("gpu.count", "h100-lost-gpu.json", expected=8), Status.FAIL)
    assert r.component == "gpu3"
    assert r.message == "GPU lost (NVML_ERROR_GPU_IS_LOST): reboot the node"
    assert r.values["nvml_code"] == 15


def test_count_ignores_only_job_gpus():
    job = JobInfo(job_id="812", gpus=(0, 1))
    r = only(run("gpu.count", "h100-lost-gpu.json", job=job, expected=8), Status.FAIL)
    assert r.component == "gpu3"


@pytest.mark.parametrize(
    ("expected", "status", "message"),
    [
        (
            None,
            Status.SKIP,
            "NVML unavailable: NVML Shared Library Not Found "
            "(NVML_ERROR_LIBRARY_NOT_FOUND); no GPUs expected (gpu.count expected not set)",
        ),
        (
            0,
            Status.SKIP,
            "no GPUs expected; NVML unavailable: NVML Shared Library Not Found "
            "(NVML_ERROR_LIBRARY_NOT_FOUND)",
        ),
        (
            8,
            Status.FAIL,
            "NVML unavailable: NVML Shared Library Not Found "
            "(NVML_ERROR_LIBRARY_NOT_FOUND) (expected 8 GPUs)",
        ),
    ],
)
def test_count_without_nvml(expected, status, message):
    r = only(run("gpu.count", "no-nvml.json", expected=expected), status)
    assert r.message == message and r.component == "node"


def test_count_driver_mismatch_fails_even_when_not_pinned():
    r = only(run("gpu.count", "nvml-driver-mismatch.json"), Status.FAIL)
    assert r.message == (
        "NVML unavailable: RM has detected an NVML/RM version mismatch. "
        "(NVML_ERROR_LIB_RM_VERSION_MISMATCH)"
    )


@pytest.mark.parametrize("check_id", [c for c in NVML_CHECKS if c != "gpu.count"])
@pytest.mark.parametrize("fixture", ["no-nvml.json", "nvml-driver-mismatch.json"])
def test_other_checks_skip_when_nvml_is_unavailable(check_id, fixture):
    r = only(
        run(check_id, fixture, settle_s=0) if check_id == "gpu.idle" else run(check_id, fixture),
        Status.SKIP,
    )
    assert r.message.startswith("NVML unavailable: ") and r.component == "node"


@pytest.mark.parametrize(
    "check_id", [c for c in NVML_CHECKS if c not in ("gpu.count", "gpu.driver")]
)
def test_lost_gpu_fails_every_per_gpu_check(check_id, state_dir):
    results = run(
        check_id,
        "h100-lost-gpu.json",
        phase="epilog",
        state_dir=state_dir,
        **({"settle_s": 0} if check_id == "gpu.idle" else {}),
    )
    assert problems(results) == [
        (Status.FAIL, "gpu3", "GPU lost (NVML_ERROR_GPU_IS_LOST): reboot the node")
    ]


# --- gpu.model / gpu.driver -----------------------------------------------------------


def test_model_pinned():
    r = only(run("gpu.model", "h100-healthy.json", name="NVIDIA H100*"))
    assert r.message == "8 GPUs: NVIDIA H100 80GB HBM3"
    results = run("gpu.model", "v100-retired-pages.json", name="NVIDIA H100 80GB HBM3")
    assert problems(results)[0] == (
        Status.FAIL,
        "gpu0",
        "model Tesla V100-PCIE-32GB (expected NVIDIA H100 80GB HBM3)",
    )
    assert len(problems(results)) == 4


def test_driver_pinned_versions():
    assert (
        only(
            run(
                "gpu.driver",
                "h100-healthy.json",
                driver_version="550.90.07",
                cuda_driver_version="12.4",
            )
        ).message
        == "driver 550.90.07, CUDA 12.4"
    )
    r = only(run("gpu.driver", "v100-retired-pages.json", driver_version="550.90.07"), Status.FAIL)
    assert r.message == "driver 535.183.01 (expected 550.90.07)" and r.component == "node"
    r = only(run("gpu.driver", "v100-retired-pages.json", cuda_driver_version=12040), Status.FAIL)
    assert r.message == "CUDA driver 12.2 (expected 12.4)"
    assert only(
        run("gpu.driver", "h100-healthy.json", driver_version="550.*", cuda_driver_version="12040")
    )


# --- gpu.ecc / gpu.remap --------------------------------------------------------------


def test_ecc_volatile_dbe_fails():
    results = run("gpu.ecc", "h100-dbe.json")
    assert problems(results) == [
        (
            Status.FAIL,
            "gpu5",
            "2 uncorrectable ECC errors since last reset (volatile DBE): reset GPU",
        )
    ]
    assert results[0].values["volatile_uncorrected"] == 2


def test_ecc_aggregate_threshold():
    assert problems(run("gpu.ecc", "h100-remap-failure.json")) == []  # unset: not checked
    results = run("gpu.ecc", "h100-remap-failure.json", max_aggregate_uncorrected=4)
    assert problems(results) == [
        (
            Status.FAIL,
            "gpu6",
            "9 uncorrectable ECC errors lifetime (limit 4): RMA candidate",
        )
    ]


def test_ecc_disabled(tmp_path):
    path = _edit(tmp_path, "h100-healthy.json", 1, ecc_mode_current=False, ecc_mode_pending=False)
    assert problems(run("gpu.ecc", path)) == [
        (Status.FAIL, "gpu1", "ECC disabled: enable with nvidia-smi -e 1 and reset")
    ]
    assert problems(run("gpu.ecc", path, require_enabled=False)) == []


def test_remap_pending():
    results = run("gpu.remap", "h100-remap-pending.json")
    assert problems(results) == [(Status.FAIL, "gpu3", "row remap pending (needs GPU reset)")]
    assert results[0].values == {"corr_rows": 1, "unc_rows": 0, "pending": True, "failure": False}


def test_remap_failure():
    assert problems(run("gpu.remap", "h100-remap-failure.json")) == [
        (Status.FAIL, "gpu6", "row remap failure (needs RMA)")
    ]


def test_retired_pages_on_parts_without_remapping():
    assert problems(run("gpu.remap", "v100-retired-pages.json")) == [
        (Status.FAIL, "gpu1", "page retirement pending (needs GPU reset)")
    ]
    r = run(
        "gpu.remap",
        "v100-retired-pages.json",
        only_job_gpus=True,
        job=JobInfo(job_id="9", gpus=(0, 2)),
    )
    assert only(r).message == "2 GPUs: 0 retired pages, none pending"
    assert only(r).component == "gpu0,2"


def test_retired_pages_limit(tmp_path):
    path = _edit(tmp_path, "v100-retired-pages.json", 2, retired_pages_sbe=40, retired_pages_dbe=22)
    assert (Status.FAIL, "gpu2", "62 retired pages (limit 60): RMA candidate") in problems(
        run("gpu.remap", path)
    )


def test_remap_unknown_error_fails_and_permission_error_is_ours(tmp_path):
    path = _edit(
        tmp_path,
        "h100-healthy.json",
        4,
        remapped_rows=None,
        errors={"remapped_rows": {"code": 999}},
    )
    assert problems(run("gpu.remap", path)) == [
        (Status.FAIL, "gpu4", "cannot read remapped rows: Unknown Error (NVML_ERROR_UNKNOWN)")
    ]
    path = _edit(
        tmp_path, "h100-healthy.json", 4, remapped_rows=None, errors={"remapped_rows": {"code": 4}}
    )
    [(status, component, _)] = problems(run("gpu.remap", path))
    assert (status, component) == (Status.ERROR, "gpu4")


# --- gpu.pcie -------------------------------------------------------------------------


def test_pcie_x8():
    assert problems(run("gpu.pcie", "h100-pcie-x8.json")) == [
        (Status.FAIL, "gpu2", "PCIe x8 (expected x16)")
    ]


def test_pcie_expected_width_and_gen(tmp_path):
    assert problems(run("gpu.pcie", "h100-healthy.json", expected_width=16)) == []
    idle = _edit(tmp_path, "h100-healthy.json", 0, pcie_gen_current=1)
    assert problems(run("gpu.pcie", idle)) == []  # gen drops at idle: not judged by default
    assert problems(run("gpu.pcie", idle, check_gen=True)) == [
        (Status.FAIL, "gpu0", "PCIe gen1 (expected gen5)")
    ]
    assert problems(run("gpu.pcie", idle, expected_gen=4))[0][2] == "PCIe gen1 (expected gen4)"


# --- gpu.nvlink -----------------------------------------------------------------------


def test_nvlink_down(state_dir):
    """Without expected_active a link is down when it was active at the last run (a first
    reading cannot tell a failed link from an unwired one: tests/unit/test_gpu_nvlink.py)."""
    run("gpu.nvlink", "h100-healthy.json", state_dir=state_dir)  # the last hook run
    nvml.clear_cache()
    results = run("gpu.nvlink", "h100-nvlink-down.json", state_dir=state_dir)
    assert problems(results) == [(Status.FAIL, "gpu4", "NVLink 7 down (17/18 active)")]
    results = run("gpu.nvlink", "h100-nvlink-down.json", state_dir=state_dir, expected_active=18)
    assert problems(results) == [(Status.FAIL, "gpu4", "17 NVLinks active (expected 18); down: 7")]


def test_nvlink_not_supported(state_dir):
    results = run("gpu.nvlink", "v100-retired-pages.json", state_dir=state_dir)
    assert {(r.status, r.message) for r in results} == {(Status.SKIP, "no NVLink on this GPU")}
    results = run("gpu.nvlink", "v100-retired-pages.json", state_dir=state_dir, expected_active=6)
    assert problems(results)[0] == (Status.FAIL, "gpu0", "no NVLink (expected 6 active links)")


def test_nvlink_counters_rising_between_runs(tmp_path, state_dir):
    path = tmp_path / "node.json"
    shutil.copy(NVML_FIXTURES / "h100-healthy.json", path)
    assert problems(run("gpu.nvlink", f"replay:{path}", state_dir=state_dir)) == []
    # same readings again: nothing rose
    nvml.clear_cache()
    assert problems(run("gpu.nvlink", f"replay:{path}", state_dir=state_dir)) == []
    data = json.loads(path.read_text())
    counters = data["gpus"][6]["nvlinks"][11]["counters"]
    counters["recovery"] += 3
    counters["replay"] += 50  # under its allowance of 100
    path.write_text(json.dumps(data))
    nvml.clear_cache()
    results = run("gpu.nvlink", f"replay:{path}", state_dir=state_dir)
    assert problems(results) == [
        (Status.FAIL, "gpu6", "NVLink 11 recovery errors +3 since last run")
    ]
    assert results[0].values["rises"] == ["link11 recovery +3", "link11 replay +50"]
    # reported once: the next run compares with the new reading
    nvml.clear_cache()
    assert problems(run("gpu.nvlink", f"replay:{path}", state_dir=state_dir)) == []
    # a counter reset (driver reload) is a new baseline, not a rise
    counters["recovery"] = 0
    path.write_text(json.dumps(data))
    nvml.clear_cache()
    assert problems(run("gpu.nvlink", f"replay:{path}", state_dir=state_dir)) == []


def _rising_node(tmp_path):
    """A replay file and a procfs with a boot id; `rise()` adds 3 recovery errors on gpu6
    link 11 (NVML_NVLINK_ERROR_DL_RECOVERY), as a marginal link does between two jobs."""
    path = tmp_path / "node.json"
    shutil.copy(NVML_FIXTURES / "h100-healthy.json", path)
    proc = tmp_path / "proc"
    (proc / "sys" / "kernel" / "random").mkdir(parents=True)
    (proc / "sys" / "kernel" / "random" / "boot_id").write_text("boot-a\n")

    def rise():
        data = json.loads(path.read_text())
        data["gpus"][6]["nvlinks"][11]["counters"]["recovery"] += 3
        path.write_text(json.dumps(data))
        nvml.clear_cache()

    return f"replay:{path}", proc, rise


def test_nvlink_manual_run_does_not_move_the_baseline(tmp_path, state_dir):
    source, proc, rise = _rising_node(tmp_path)
    run("gpu.nvlink", source, state_dir=state_dir, procfs=proc)  # prolog: baseline
    rise()
    for _ in range(2):  # a manual run sees the rise, and leaves it for the hooks
        manual = run("gpu.nvlink", source, phase="manual", state_dir=state_dir, procfs=proc)
        assert problems(manual) == [
            (Status.FAIL, "gpu6", "NVLink 11 recovery errors +3 since last run")
        ]
    got = run("gpu.nvlink", source, phase="epilog", state_dir=state_dir, procfs=proc)
    assert problems(got) == [(Status.FAIL, "gpu6", "NVLink 11 recovery errors +3 since last run")]


def test_nvlink_reading_from_before_a_reboot_is_only_a_baseline(tmp_path, state_dir):
    source, proc, rise = _rising_node(tmp_path)
    run("gpu.nvlink", source, state_dir=state_dir, procfs=proc)
    rise()
    (proc / "sys" / "kernel" / "random" / "boot_id").write_text("boot-b\n")
    results = run("gpu.nvlink", source, state_dir=state_dir, procfs=proc)
    assert problems(results) == []
    assert results[0].values["gpu6"]["baseline"] == "node rebooted since last reading, new baseline"


def test_nvlink_old_reading_is_only_a_baseline(tmp_path, state_dir):
    from nodecheck.checks.gpu import links
    from nodecheck.store.state import open_state

    source, proc, rise = _rising_node(tmp_path)
    run("gpu.nvlink", source, state_dir=state_dir, procfs=proc)
    with open_state(state_dir) as store:  # the last reading was taken two days ago
        blob = store.get_json(links.NVLINK_STATE_KEY)
        for entry in blob["gpus"].values():
            entry["t"] -= 2 * 86400
        store.put_json(links.NVLINK_STATE_KEY, blob)
    rise()
    results = run("gpu.nvlink", source, state_dir=state_dir, procfs=proc)
    assert problems(results) == []
    assert results[0].values["gpu6"]["baseline"] == "last reading 2.0d old, new baseline"
    rise()  # within the window again
    assert problems(run("gpu.nvlink", source, state_dir=state_dir, procfs=proc)) == [
        (Status.FAIL, "gpu6", "NVLink 11 recovery errors +3 since last run")
    ]


def test_nvlink_state_held_by_someone_else_is_an_error_not_a_hang(tmp_path, state_dir, monkeypatch):
    import sqlite3

    from nodecheck.checks.gpu import links

    source, proc, _ = _rising_node(tmp_path)
    run("gpu.nvlink", source, state_dir=state_dir, procfs=proc)
    monkeypatch.setattr(links, "NVLINK_STATE_BUSY_MS", 200)
    holder = sqlite3.connect(state_dir / "state.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        results = run("gpu.nvlink", source, state_dir=state_dir, procfs=proc)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    [error] = [r for r in results if r.status is Status.ERROR]
    assert "state unavailable" in error.message and "locked" in error.message
    assert any(r.status is Status.PASS for r in results)


def test_nvlink_state_trouble_still_reports_links(tmp_path):
    bad = tmp_path / "file-not-dir"
    bad.write_text("x")
    results = run("gpu.nvlink", "h100-nvlink-down.json", state_dir=bad, expected_active=18)
    assert (Status.FAIL, "gpu4", "17 NVLinks active (expected 18); down: 7") in problems(results)
    assert any(r.status is Status.ERROR and "state unavailable" in r.message for r in results)


# --- gpu.clocks / gpu.thermal / gpu.power ---------------------------------------------


def test_clocks_hw_slowdown_at_idle():
    assert problems(run("gpu.clocks", "h100-hw-slowdown.json")) == [
        (Status.FAIL, "gpu1", "HW slowdown active at idle (clocks event reasons 0x9)")
    ]


def test_clocks_sw_thermal_warns_and_busy_gpu_is_not_judged():
    assert problems(run("gpu.clocks", "h100-hot-idle.json")) == [
        (Status.WARN, "gpu7", "SW thermal slowdown active at idle (clocks event reasons 0x20)")
    ]
    assert problems(run("gpu.clocks", "h100-leftover-process.json")) == [
        (Status.SKIP, "gpu0", "GPU busy (1 process): clocks not judged")
    ]


def test_clocks_unknown_reason_is_a_config_error():
    with pytest.raises(ValueError, match="unknown clock event reasons"):
        run("gpu.clocks", "h100-healthy.json", fail_reasons=["hw_slowdwn"])


def test_thermal_and_power_at_idle():
    assert problems(run("gpu.thermal", "h100-hot-idle.json")) == [
        (Status.FAIL, "gpu7", "88C at idle (limit 80C)")
    ]
    assert problems(run("gpu.thermal", "h100-healthy.json", warn_temp_c=32)) == [
        (Status.WARN, f"gpu{i}", f"{t}C at idle (warn 32C)")
        for i, t in enumerate([31, 32, 33, 34, 31, 32, 33, 34])
        if t > 32
    ]
    assert problems(run("gpu.power", "h100-hot-idle.json")) == [
        (Status.FAIL, "gpu7", "drawing 412W at idle (max 350W)")
    ]
    assert problems(run("gpu.power", "h100-healthy.json", max_idle_w=75))[0] == (
        Status.FAIL,
        "gpu5",
        "drawing 76W at idle (max 75W)",
    )


def test_power_limit_below_expected(tmp_path):
    path = _edit(tmp_path, "h100-healthy.json", 2, power_limit_mw=500000)
    assert problems(run("gpu.power", path, expected_limit_w=700)) == [
        (Status.FAIL, "gpu2", "power limit 500W (expected 700W)")
    ]


# --- settings -------------------------------------------------------------------------


def test_persistence_mig_compute_mode_as_expected(tmp_path):
    path = _edit(
        tmp_path,
        "h100-healthy.json",
        5,
        persistence_mode=False,
        compute_mode=3,
        mig_mode_current=True,
        mig_mode_pending=True,
    )
    assert problems(run("gpu.persistence", path)) == [
        (Status.FAIL, "gpu5", "persistence mode off (expected on); start nvidia-persistenced")
    ]
    assert problems(run("gpu.persistence", path, severity="warn"))[0][0] is Status.WARN
    assert problems(run("gpu.mig", path)) == [
        (Status.FAIL, "gpu5", "MIG enabled (expected disabled)")
    ]
    assert problems(run("gpu.compute_mode", path)) == [
        (Status.FAIL, "gpu5", "compute mode exclusive_process (expected default)")
    ]
    assert len(problems(run("gpu.compute_mode", path, expected="exclusive_process"))) == 7


def test_mig_change_pending(tmp_path):
    path = _edit(tmp_path, "h100-healthy.json", 0, mig_mode_pending=True)
    assert problems(run("gpu.mig", path)) == [
        (Status.WARN, "gpu0", "MIG will be enabled at next GPU reset (expected disabled)")
    ]
    assert problems(run("gpu.mig", path, expected=True))[0] == (
        Status.FAIL,
        "gpu0",
        "MIG disabled (expected enabled) (change pending: reset the GPU)",
    )


def test_bad_option_values_raise():
    with pytest.raises(ValueError, match="severity"):
        run("gpu.persistence", "h100-healthy.json", severity="maybe")
    with pytest.raises(ValueError, match="expected must be one of"):
        run("gpu.compute_mode", "h100-healthy.json", expected="exclusive")


# --- gpu.fabric -----------------------------------------------------------------------


def test_fabric_not_started():
    found = problems(run("gpu.fabric", "h100-fabric-not-started.json"))
    assert len(found) == 8
    assert found[0] == (
        Status.FAIL,
        "gpu0",
        "fabric registration not started (is nvidia-fabricmanager running?)",
    )


def test_fabric_health_mask_without_a_summary_warns(tmp_path):
    """The v2 struct (drivers before R580; pynvml up to 12.575 has no other) carries only
    healthMask: DEGRADED_BW true (1 at bit 0) and ROUTE_UNHEALTHY true (1 at bit 4)."""
    fabric = {"state": 3, "status": 0, "healthMask": 0x11, "healthSummary": None}
    path = _edit(tmp_path, "h100-healthy.json", 3, fabric=fabric)
    assert problems(run("gpu.fabric", path)) == [
        (Status.WARN, "gpu3", "fabric health: bandwidth degraded, route unhealthy")
    ]
    healthy = {**fabric, "healthMask": 0xAA}  # every flag false
    assert (
        problems(run("gpu.fabric", _edit(tmp_path, "h100-healthy.json", 3, fabric=healthy))) == []
    )


def test_fabric_failure_status_and_health(tmp_path):
    path = _edit(
        tmp_path,
        "h100-healthy.json",
        3,
        fabric={"state": 3, "status": 999, "healthMask": 0, "healthSummary": None},
    )
    assert problems(run("gpu.fabric", path)) == [
        (Status.FAIL, "gpu3", "fabric registration failed: Unknown Error (NVML_ERROR_UNKNOWN)")
    ]
    path = _edit(
        tmp_path,
        "h100-healthy.json",
        3,
        fabric={"state": 3, "status": 0, "healthMask": 0, "healthSummary": 2},
    )
    assert problems(run("gpu.fabric", path)) == [(Status.FAIL, "gpu3", "fabric unhealthy")]


def test_fabric_not_supported_is_skip_unless_required():
    results = run("gpu.fabric", "v100-retired-pages.json")
    assert {r.status for r in results} == {Status.SKIP}
    assert results[0].message == "not an NVSwitch system (fabric not supported)"
    results = run("gpu.fabric", "v100-retired-pages.json", required=True)
    assert {r.status for r in results} == {Status.FAIL}


# --- gpu.idle -------------------------------------------------------------------------


def test_idle_leftover_process_in_epilog():
    results = run("gpu.idle", "h100-leftover-process.json", phase="epilog", settle_s=0)
    assert problems(results) == [
        (Status.FAIL, "gpu0", "1 compute process left after job 812: pid 48213")
    ]
    assert results[0].values["pids"] == [48213]


def test_idle_waits_for_processes_to_go(tmp_path, monkeypatch):
    path = tmp_path / "node.json"
    shutil.copy(NVML_FIXTURES / "h100-leftover-process.json", path)
    calls = []
    real_fresh = nvml.collect_fresh

    def fresh(source, indices=None):
        calls.append(source)
        shutil.copy(NVML_FIXTURES / "h100-healthy.json", path)  # the process exited meanwhile
        return real_fresh(source, indices)

    monkeypatch.setattr(nvml, "collect_fresh", fresh)
    results = run("gpu.idle", f"replay:{path}", phase="epilog", settle_s=2)
    assert problems(results) == [] and len(calls) == 1


def test_idle_memory_not_released(tmp_path):
    path = _edit(
        tmp_path,
        "h100-healthy.json",
        6,
        memory={"total": 85520809984, "free": 72635908096, "used": 12884901888},
    )
    assert problems(run("gpu.idle", path, phase="epilog", settle_s=0)) == [
        (Status.FAIL, "gpu6", "12.0 GiB GPU memory still used with no process after job 812")
    ]


def test_only_job_gpus_restricts_every_per_gpu_check():
    job = JobInfo(job_id="812", gpus=(1, 2))
    results = run(
        "gpu.idle",
        "h100-leftover-process.json",
        phase="epilog",
        job=job,
        only_job_gpus=True,
        settle_s=0,
    )
    assert problems(results) == [] and results[0].component == "gpu1,2"
    # without the option (or without SLURM_JOB_GPUS) every GPU is looked at
    assert problems(
        run(
            "gpu.idle",
            "h100-leftover-process.json",
            phase="epilog",
            job=job,
            only_job_gpus=False,
            settle_s=0,
        )
    )


def test_idle_on_a_shared_node_ignores_other_jobs_gpus():
    """Issue 14: job 812 had GPUs 1 and 2; the process on gpu0 belongs to another job
    still running there. gpu.idle looks at the job's GPUs by default."""
    job = JobInfo(job_id="812", gpus=(1, 2))
    results = run("gpu.idle", "h100-leftover-process.json", phase="epilog", job=job, settle_s=0)
    assert problems(results) == [] and results[0].component == "gpu1,2"
    owner = JobInfo(job_id="811", gpus=(0,))
    assert problems(
        run("gpu.idle", "h100-leftover-process.json", phase="epilog", job=owner, settle_s=0)
    ) == [(Status.FAIL, "gpu0", "1 compute process left after job 811: pid 48213")]


def test_idle_process_list_unavailable_is_not_idle(tmp_path):
    unavailable = {"code": 999, "name": "NVML_ERROR_UNKNOWN", "message": "Unknown Error"}
    path = _edit(
        tmp_path, "h100-healthy.json", 5, processes=None, errors={"processes": unavailable}
    )
    [bad] = [
        r for r in run("gpu.idle", path, phase="epilog", settle_s=0) if r.status is not Status.PASS
    ]
    assert (bad.status, bad.component) == (Status.ERROR, "gpu5")
    assert bad.message == (
        "compute process list unavailable (NVML_ERROR_UNKNOWN): cannot tell whether it is idle"
    )
    missing = _edit(tmp_path, "h100-healthy.json", 3, graphics_processes=None)
    [bad] = [
        r
        for r in run("gpu.idle", missing, phase="epilog", settle_s=0)
        if r.status is not Status.PASS
    ]
    assert (bad.status, bad.component) == (Status.ERROR, "gpu3")


def test_idle_reads_graphics_processes(tmp_path):
    """A graphics context (an X server or a Vulkan job's leftover) holds the GPU as well."""
    proc = [{"pid": 3127, "usedGpuMemory": 4194304}]
    path = _edit(tmp_path, "h100-healthy.json", 4, graphics_processes=proc)
    assert problems(run("gpu.idle", path, phase="epilog", settle_s=0)) == [
        (Status.FAIL, "gpu4", "1 graphics process left after job 812: pid 3127")
    ]


# --- helpers --------------------------------------------------------------------------


def _edit(tmp_path, fixture, index, **changes):
    """A copy of a fixture with some fields of one GPU changed; returns its replay source."""
    data = json.loads((NVML_FIXTURES / fixture).read_text())
    data["gpus"][index].update(changes)
    path = tmp_path / f"{fixture}-{index}-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(data))
    return f"replay:{path}"


# --- configuration --------------------------------------------------------------------


def test_options_come_from_node_class_tables():
    import tomllib

    from nodecheck.run.config import parse_config

    text = f"""
[checks."gpu.xid"]
critical = [79, 48]
[[node_class]]
name = "hgx-h100"
match = ["gpu[001-064]"]
nvml = "replay:{NVML_FIXTURES / "h100-healthy.json"}"
[node_class.checks."gpu.count"]
expected = 8
[node_class.checks."gpu.driver"]
cuda_driver_version = "12.4"
[node_class.checks."gpu.nvlink"]
max_increase = {{ recovery = 2 }}
"""
    config = parse_config(tomllib.loads(text), None, REGISTRY)
    node = config.for_node("gpu007", REGISTRY)
    assert node.node_class == "hgx-h100"
    assert node.settings.nvml.startswith("replay:")
    assert node.checks["gpu.count"].options["expected"] == 8
    assert node.checks["gpu.driver"].options["cuda_driver_version"] == "12.4"
    assert node.checks["gpu.nvlink"].options["max_increase"] == {"recovery": 2}
    assert node.checks["gpu.xid"].options["critical"] == [79, 48]
    other = config.for_node("login1", REGISTRY)
    assert other.checks["gpu.count"].options["expected"] is None
    assert other.settings.nvml == "real"


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ('[checks."gpu.count"]\nexpected = "8"', "expected int"),
        ('[checks."gpu.count"]\nexpected = true', "expected int"),
        ('[checks."gpu.count"]\nexpectd = 8', "unknown option 'expectd'"),
        ('[checks."gpu.xid"]\ncritical = ["79"]', r"critical\[0\]: expected int"),
    ],
)
def test_bad_gpu_options_are_config_errors(table, error):
    import tomllib

    from nodecheck.run.config import parse_config
    from nodecheck.run.config_file import ConfigError

    with pytest.raises(ConfigError, match=error):
        parse_config(tomllib.loads(table), None, REGISTRY)


def test_count_nvml_without_gpus(tmp_path):
    data = json.loads((NVML_FIXTURES / "h100-healthy.json").read_text())
    data.update(device_count=0, gpus=[])
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(data))
    r = only(run("gpu.count", f"replay:{path}"), Status.SKIP)
    assert r.message == "NVML sees no GPUs; none expected (gpu.count expected not set)"
    assert only(run("gpu.count", f"replay:{path}", expected=0)).message == "no GPUs (as expected)"
    r = only(run("gpu.count", f"replay:{path}", expected=8), Status.FAIL)
    assert r.message == "0 GPUs visible (expected 8)"
    assert only(run("gpu.ecc", f"replay:{path}"), Status.SKIP).message == "no GPUs visible"


# --- gpu.remap: the driver's recovery action ------------------------------------------


def test_remap_reports_the_recovery_action_the_driver_asks_for():
    """NVML_FI_DEV_GET_GPU_RECOVERY_ACTION = 2 (NVML_GPU_RECOVERY_ACTION_NODE_REBOOT): the
    value behind Xid 154 "... to 0x2 (Node Reboot Required)"."""
    results = run("gpu.remap", "h100-recovery-reboot.json")
    assert problems(results) == [
        (Status.FAIL, "gpu2", "driver asks for recovery: Node Reboot Required")
    ]
    assert results[0].remedy == "reboot" and results[0].values["recovery_action"] == 2


# The recovery action code under each driver branch (probes/recovery_action.py): the snapshot's
# driver version picks the table; 5 is a bus reset in R580 and the IMEX domain from R595.
@pytest.mark.parametrize(
    ("driver", "code", "status", "remedy", "message"),
    [
        ("575.57.08", 1, Status.FAIL, "reset-gpu", "GPU Reset Required"),
        ("575.57.08", 4, Status.FAIL, "reset-gpu", "Drain and Reset"),
        ("575.57.08", 3, Status.WARN, "", "Drain P2P"),
        ("575.57.08", 5, Status.WARN, "", "not defined for this driver branch"),
        ("580.95.05", 5, Status.FAIL, "reset-gpu", "GPU Bus Reset Required"),
        ("580.95.05", 6, Status.WARN, "", "not defined for this driver branch"),
        ("590.48.01", 5, Status.WARN, "", "not defined for this driver branch"),
        ("595.71.05", 5, Status.WARN, "", "Recover IMEX Domain"),
        ("615.20.01", 5, Status.WARN, "", "Recover IMEX Domain"),
        ("615.20.01", 6, Status.FAIL, "reset-gpu", "Bus Reset Required"),
        ("615.20.01", 7, Status.FAIL, "reboot", "System Reboot Required"),
        ("615.20.01", 9, Status.WARN, "", "not defined for this driver branch"),
        (None, 5, Status.FAIL, "reset-gpu", "Bus Reset or Recover IMEX Domain"),
    ],
)
def test_remap_recovery_action_by_driver_branch(tmp_path, driver, code, status, remedy, message):
    path = _edit(tmp_path, "h100-recovery-reboot.json", 2, recovery_action=code)
    data = json.loads(Path(path.removeprefix("replay:")).read_text())
    data["driver_version"] = driver
    Path(path.removeprefix("replay:")).write_text(json.dumps(data))
    [bad] = [r for r in run("gpu.remap", path) if r.status is not Status.PASS]
    assert (bad.status, bad.component, bad.remedy or "") == (status, "gpu2", remedy)
    assert bad.message.startswith(f"driver asks for recovery: {message}")
    assert bad.values["driver_branch"] == (int(driver[:3]) if driver else None)


def test_remap_pending_and_recovery_action_both_reported(tmp_path):
    path = _edit(
        tmp_path,
        "h100-recovery-reboot.json",
        2,
        remapped_rows={"corrRows": 1, "uncRows": 0, "isPending": True, "failureOccurred": False},
    )
    assert [m for _, _, m in problems(run("gpu.remap", path))] == [
        "row remap pending (needs GPU reset)",
        "driver asks for recovery: Node Reboot Required",
    ]


def test_remap_without_the_recovery_field_judges_rows_only():
    """Drivers before R565 answer NOT_SUPPORTED for the field: no result of its own."""
    assert problems(run("gpu.remap", "h100-healthy.json")) == []
