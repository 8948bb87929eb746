"""The gpu family through the real runner: one child for the group, a hung NVML call is a
FAIL naming the call, gpu.xid (its own child) still reports, drain reasons name the GPU."""

from dataclasses import replace

import pytest
from helpers import NVML_FIXTURES, make_ctx, nvml_check_ids, options_of

from nodecheck.checks import gpu  # noqa: F401
from nodecheck.checks.context import JobInfo
from nodecheck.checks.registry import all_checks, with_defaults
from nodecheck.core.reason import format_reason
from nodecheck.core.results import Status
from nodecheck.run.runner import Planned, run_checks

REGISTRY = all_checks()
NVML_CHECKS = nvml_check_ids(REGISTRY)


pytestmark = pytest.mark.usefixtures("fresh_nvml_cache")


def plan(fixture, tmp_path, phase="prolog", timeout_s=2.0, check_ids=None):
    out = []
    log = tmp_path / "kmsg"
    if not log.exists():
        log.write_text((NVML_FIXTURES / "kmsg-h100-before.txt").read_text())
    for cid in check_ids or [*NVML_CHECKS, "gpu.xid"]:
        chk = REGISTRY[cid]
        if phase not in chk.phases:
            continue
        extra = {"settle_s": 0} if cid == "gpu.idle" else {}
        if cid == "gpu.xid":
            extra = {"kmsg": str(log)}
        ctx = make_ctx(
            phase=phase,
            options=options_of(chk, **extra),
            nvml=f"replay:{NVML_FIXTURES / fixture}",
            state_dir=tmp_path / "state",
            procfs_root=tmp_path,
        )
        out.append(Planned(chk, ctx, timeout_s))
    return out


def test_healthy_node_through_the_runner(tmp_path):
    results = run_checks(plan("h100-healthy.json", tmp_path), budget_s=20)
    assert {r.check_id for r in results} == {*NVML_CHECKS, "gpu.xid"} - {"gpu.idle"}
    assert {r.status for r in results} == {Status.PASS}


def test_hung_nvml_call_fails_the_group_naming_the_call(tmp_path):
    results = run_checks(plan("h100-hang-remap.json", tmp_path, timeout_s=1.0), budget_s=10)
    by = {r.check_id: r for r in results}
    [first] = [r for r in results if r.values.get("hung")]
    assert first.status is Status.FAIL
    assert first.message.startswith("probe hung after 1.")
    assert first.message.endswith("s in nvmlDeviceGetRemappedRows gpu3")
    others = [r for r in results if r.values.get("not_run")]
    assert {r.check_id for r in others} == set(by) - {"gpu.xid", first.check_id}
    assert others and all(r.status is Status.SKIP for r in others)
    assert all(r.message.startswith("not run: an earlier probe in its group") for r in others)
    # the kernel log check is not in the NVML group: it still answers
    assert by["gpu.xid"].status is Status.PASS


def test_hang_outside_the_job_gpus_does_not_hang(tmp_path):
    job = JobInfo(job_id="812", gpus=(0, 1))
    planned = [
        replace(
            item,
            ctx=replace(item.ctx, job=job, options={**item.ctx.options, "only_job_gpus": True}),
        )
        for item in plan("h100-hang-remap.json", tmp_path, check_ids=["gpu.remap", "gpu.ecc"])
    ]
    results = run_checks(planned, budget_s=10)
    assert {(r.status, r.component) for r in results} == {(Status.PASS, "gpu0,1")}


def test_drain_reason_for_pending_remap(tmp_path):
    results = run_checks(plan("h100-remap-pending.json", tmp_path), budget_s=20)
    failures = [r for r in results if r.status is Status.FAIL]
    assert [(r.check_id, r.component) for r in failures] == [("gpu.remap", "gpu3")]
    assert format_reason(failures, "prolog", "812") == (
        "nodecheck: gpu.remap gpu3: row remap pending (needs GPU reset) [prolog job 812]"
    )


def test_epilog_leftover_process_reason(tmp_path):
    results = run_checks(plan("h100-leftover-process.json", tmp_path, phase="epilog"), 20)
    failures = [r for r in results if r.status is Status.FAIL]
    assert format_reason(failures, "epilog", "812") == (
        "nodecheck: gpu.idle gpu0: 1 compute process left after job 812: pid 48213 [epilog job 812]"
    )


def test_no_gpus_says_so(tmp_path):
    results = run_checks(plan("no-nvml.json", tmp_path, check_ids=NVML_CHECKS), budget_s=20)
    assert {r.status for r in results} == {Status.SKIP}
    count = next(r for r in results if r.check_id == "gpu.count")
    assert "NVML unavailable" in count.message and "no GPUs expected" in count.message


def test_real_nvml_through_the_runner_never_crashes(tmp_path):
    """On this machine (no GPU) or a GPU node: results, never an internal error."""
    planned = []
    for cid in NVML_CHECKS:
        chk = REGISTRY[cid]
        extra = {"settle_s": 0} if cid == "gpu.idle" else {}
        ctx = make_ctx(
            phase="manual",
            options=options_of(chk, **extra),
            nvml="real",
            state_dir=tmp_path / "state",
        )
        planned.append(Planned(chk, ctx, 15.0))
    results = run_checks(planned, budget_s=30)
    assert all(r.status is not Status.ERROR for r in results), [
        (r.check_id, r.message) for r in results if r.status is Status.ERROR
    ]


@pytest.mark.parametrize(
    ("fixture", "phase", "reason"),
    [
        (
            "h100-remap-pending.json",
            "prolog",
            "nodecheck: gpu.remap gpu3: row remap pending (needs GPU reset) "
            "[prolog job 812 sev=critical act=reset-gpu]",
        ),
        (
            "h100-remap-failure.json",
            "prolog",
            "nodecheck: gpu.remap gpu6: row remap failure (needs RMA) "
            "[prolog job 812 sev=critical act=replace]",
        ),
        (
            "h100-pcie-x8.json",
            "prolog",
            "nodecheck: gpu.pcie gpu2: PCIe x8 (expected x16) "
            "[prolog job 812 sev=medium act=admin]",
        ),
        (
            "h100-nvlink-down.json",
            "prolog",
            "nodecheck: gpu.nvlink gpu4: NVLink 7 down (17/18 active) "
            "[prolog job 812 sev=high act=reset-gpu]",
        ),
        (
            "h100-fabric-not-started.json",
            "prolog",
            "nodecheck: gpu.fabric gpu0: fabric registration not started (is "
            "nvidia-fabricmanager running?) (+7 more) [prolog job 812 sev=critical "
            "act=restart-service]",
        ),
        (
            "h100-leftover-process.json",
            "epilog",
            "nodecheck: gpu.idle gpu0: 1 compute process left after job 812: pid 48213 "
            "[epilog job 812 sev=high act=cleanup]",
        ),
    ],
)
def test_drain_reasons_with_declared_severity_and_remedy(tmp_path, fixture, phase, reason):
    if "nvlink" in fixture:  # the link was active at the last hook run (gpu.nvlink's baseline)
        run_checks(plan("h100-healthy.json", tmp_path, phase=phase), budget_s=20)
    results = run_checks(plan(fixture, tmp_path, phase=phase), budget_s=20)
    failures = [with_defaults(r, REGISTRY) for r in results if r.status is Status.FAIL]
    assert format_reason(failures, phase, "812") == reason


def test_lost_gpu_is_critical_and_needs_a_reboot(tmp_path):
    results = run_checks(plan("h100-lost-gpu.json", tmp_path), budget_s=20)
    failures = [with_defaults(r, REGISTRY) for r in results if r.status is Status.FAIL]
    assert {(r.component, r.severity, r.remedy) for r in failures} == {
        ("gpu3", "critical", "reboot")
    }
    assert format_reason(failures, "prolog", "812").startswith(
        "nodecheck: gpu.clocks gpu3: GPU lost (NVML_ERROR_GPU_IS_LOST): reboot the node (+"
    )
