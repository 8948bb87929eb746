"""GB200/GB300 NVL72: gpu.fabric's NVLink domain (cluster UUID, clique) on a GB200 compute
tray as published (tests/fixtures/nvml/gb200-*.json, sources in make_fixtures.py), the
report-only rule that keeps signals new to a platform from draining (run/report_only.py),
and Slurm's blocks read from topology.conf / topology.yaml."""

import os
import shutil
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import NVML_FIXTURES, make_ctx, options_of

from nodecheck.checks import gpu  # noqa: F401  (registers the gpu family)
from nodecheck.checks.registry import all_checks
from nodecheck.core.results import CheckResult, Status
from nodecheck.probes import nvml
from nodecheck.probes.slurm_topology import block_of, node_blocks, read_blocks
from nodecheck.run.decide import decide
from nodecheck.run.report_only import ReportOnly, report_only

FABRIC = all_checks()["gpu.fabric"]
TOPOLOGY = Path(__file__).parents[1] / "fixtures" / "real" / "slurm" / "topology"
DOMAIN = "9c6f5af3-53bf-49b5-a436-b66766c413c3"  # leptonai/gpud #1106, a GB200's clusterUuid

pytestmark = pytest.mark.usefixtures("fresh_nvml_cache")


def fabric(fixture: str, node: str = "n1", **options) -> list[CheckResult]:
    """gpu.fabric on a replayed node; IMEX left out unless asked (tests below build it)."""
    nvml.clear_cache()
    options = {"imex": "off", **options}
    ctx = make_ctx(options=options_of(FABRIC, **options), nvml=f"replay:{NVML_FIXTURES}/{fixture}")
    return list(FABRIC.func(replace(ctx, node=node)))


def judged(results: list[CheckResult], setting=None) -> list[tuple[Status, str, str]]:
    rules = {FABRIC.id: ReportOnly.resolve(setting, FABRIC.new_signals)}
    return [(r.status, r.component, r.message) for r in report_only(results, rules)]


def test_a_healthy_gb200_tray_passes_with_its_domain():
    [result] = fabric("gb200-healthy.json")
    assert result.status is Status.PASS and result.component == "gpu0-3"
    assert result.message == f"4 GPUs: fabric registration completed (domain {DOMAIN} clique 4026)"
    assert {v["cluster_uuid"] for v in result.values.values()} == {DOMAIN}


def test_the_odd_gpu_of_a_tray_is_named_and_report_only_until_enabled():
    results = fabric("gb200-clique-split.json")
    failed = [r for r in results if r.status is Status.FAIL]
    assert [(r.component, r.message) for r in failed] == [
        ("gpu3", "NVLink clique 4027 (the node's other GPUs: clique 4026)")
    ]
    assert failed[0].values["signals"] == ["nvl_domain"]
    # not set: a signal new to GB200 only reports
    assert (Status.WARN, "gpu3", "report-only: " + failed[0].message) in judged(results)
    # the site enables it (report_only = false), or lists only the other new signal
    assert (Status.FAIL, "gpu3", failed[0].message) in judged(results, False)
    assert (Status.FAIL, "gpu3", failed[0].message) in judged(results, ["nvl_registration"])


def test_a_domain_not_up_on_gb200_does_not_blame_a_host_fabric_manager():
    results = fabric("gb200-fabric-in-progress.json")
    assert {r.status for r in results} == {Status.FAIL} and len(results) == 4
    assert "no host nvidia-fabricmanager runs on GB200/GB300" in results[0].message
    assert {s for s, _, _ in judged(results)} == {Status.WARN}


def test_hgx_fabric_registration_still_drains_and_names_the_fabric_manager():
    results = fabric("h100-fabric-not-started.json")
    assert judged(results)[0] == (
        Status.FAIL,
        "gpu0",
        "fabric registration not started (is nvidia-fabricmanager running?)",
    )


def test_expected_domain_from_config_and_from_slurm_blocks():
    [bad] = [
        r for r in fabric("gb200-healthy.json", cluster_uuid="0" * 8) if r.status is Status.FAIL
    ][:1]
    assert bad.message == f"NVLink domain {DOMAIN} (expected 00000000)"
    conf = str(TOPOLOGY / "topology-block-nvl72.conf")
    [ok] = fabric("gb200-healthy.json", "gb007", topology_file=conf, domains={"nvl72a": DOMAIN})
    assert ok.status is Status.PASS and ok.values["gpu0"]["domain"] == "nvl72a"
    # gb020 is in the other rack, whose domain the site recorded as another UUID
    other = {"nvl72a": DOMAIN, "nvl72b": "5d1c0e8a-7b6f-4c2e-9f3a-1b2c3d4e5f60"}
    results = fabric("gb200-healthy.json", "gb020", topology_file=conf, domains=other)
    assert {r.status for r in results} == {Status.FAIL}
    assert results[0].message == f"NVLink domain {DOMAIN} (expected {other['nvl72b']})"


def test_report_only_never_lets_a_new_signal_drain_and_is_counted_in_the_verdict():
    results = fabric("gb200-clique-split.json")
    rules = {FABRIC.id: ReportOnly.resolve(None, FABRIC.new_signals)}
    verdict = decide(report_only(results, rules), "prolog", "7", "pass")
    assert verdict.exit_code == 0 and verdict.reason is None and len(verdict.warnings) == 1
    assert verdict.warnings[0].values["report_only"] is True
    # report_only = true holds back every FAIL of a check, signals or not (an HGX node too)
    every = {FABRIC.id: ReportOnly.resolve(True, FABRIC.new_signals)}
    held = report_only(fabric("h100-fabric-not-started.json"), every)
    assert all(r.status is Status.WARN for r in held)


def test_slurm_blocks_from_topology_conf_and_yaml():
    conf = read_blocks(TOPOLOGY / "topology-block-nvl72.conf")
    assert sorted(conf) == ["nvl72a", "nvl72b"] and len(conf["nvl72b"]) == 18
    assert block_of(conf, "gb018") == "nvl72a" and block_of(conf, "gb019") == "nvl72b"
    assert block_of(conf, "login1") is None
    yaml = read_blocks(TOPOLOGY / "topology-block-soperator.yaml")
    assert yaml == {"block7": ("h100-0", "h100-1", "h100-2", "h100-3")}
    assert node_blocks(yaml)["h100-2"] == "block7"


def _run(tmp_path: Path, fixture: str, fabric_table: str = "", extra: str = "") -> object:
    """`nodecheck run --check gpu.fabric` through the run path, with a config file."""
    from nodecheck.run.pipeline import RunRequest, execute

    config = tmp_path / "nodecheck.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\nmetrics_file = ""\nlog_target = "stderr"\n'
        f'nvml = "replay:{NVML_FIXTURES}/{fixture}"\n'
        f'[checks."gpu.fabric"]\nimex = "off"\n{fabric_table}{extra}'
    )
    req = RunRequest(
        phase="manual",
        env={"SLURMD_NODENAME": "gb001"},
        config_path=str(config),
        check_patterns=("gpu.fabric",),
    )
    return execute(req)


def test_the_run_path_applies_the_sites_report_only_setting(tmp_path):
    out = _run(tmp_path, "gb200-clique-split.json")
    assert out.verdict.status is Status.WARN and out.verdict.exit_code == 0
    out = _run(tmp_path, "gb200-clique-split.json", "report_only = false\n")
    assert out.verdict.status is Status.FAIL and out.verdict.exit_code == 1
    assert out.verdict.reason.startswith("nodecheck: gpu.fabric gpu3: NVLink clique 4027")
    # per node class, as sites roll a check out rack by rack
    table = (
        '[[node_class]]\nname = "nvl72"\nmatch = "gb[001-018]"\n'
        '[node_class.checks."gpu.fabric"]\nreport_only = ["nvl_domain"]\n'
    )
    assert _run(tmp_path, "gb200-clique-split.json", "", table).verdict.status is Status.WARN


def test_report_only_lists_are_checked_against_the_checks_new_signals(tmp_path):
    """A typo is refused when the config loads (an internal error, never a drain), not found
    out by the drain it failed to hold back."""
    out = _run(tmp_path, "gb200-healthy.json", 'report_only = ["nvl_domian"]\n')
    assert out.verdict.status is Status.ERROR and out.verdict.reason is None
    assert "unknown signals ['nvl_domian']" in out.verdict.errors[0].message


# --- IMEX: the daemon and the channel nodes ------------------------------------------

IMEX = Path(__file__).parents[1] / "fixtures" / "real" / "imex"
IMEX_MAJOR = 234  # the CUDA Programming Guide's `cat /proc/devices | grep nvidia`


def _channels(tmp_path: Path, *nodes: tuple[int, int]) -> Path:
    """A channel directory with real character device nodes (major, minor), as mknod makes them."""
    where = tmp_path / "nvidia-caps-imex-channels"
    where.mkdir()
    for major, minor in nodes:
        os.mknod(where / f"channel{minor}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
    return where


def test_imex_channels_as_the_driver_and_the_admin_made_them(tmp_path):
    from nodecheck.checks.gpu.imex import assess
    from nodecheck.probes.imex import read

    devices = IMEX / "proc-devices-imex.txt"
    good = read(devices, _channels(tmp_path, (IMEX_MAJOR, 0)), [0])
    assert good.major == IMEX_MAJOR and good.channels[0].device == (IMEX_MAJOR, 0)
    result = assess(good, None, "nvidia-imex", "/dev/nvidia-caps-imex-channels")
    assert (result.status, result.message) == (
        Status.PASS,
        "nvidia-imex running; IMEX channel(s) 0 present",
    )
    # after a reboot the node is gone (the guide: channels do not persist), and the daemon too
    gone = read(devices, tmp_path / "none", [0])
    result = assess(gone, "nvidia-imex not running", "nvidia-imex", "/dev/x")
    assert result.status is Status.FAIL and result.values["signals"] == ["imex"]
    assert result.message == "nvidia-imex not running (+1 more)"
    assert (
        "channel0 missing (channels do not persist through a reboot" in result.values["problems"][1]
    )


def test_imex_channel_of_another_device_and_a_driver_without_imex(tmp_path):
    from nodecheck.checks.gpu.imex import assess
    from nodecheck.probes.imex import read

    wrong = read(IMEX / "proc-devices-imex.txt", _channels(tmp_path, (IMEX_MAJOR + 1, 0)), [0])
    message = assess(wrong, None, "nvidia-imex", "/d").message
    assert message == "IMEX channel /d/channel0 is char 235:0, not 234:0"
    # this machine's own /proc/devices: no NVIDIA driver, so no IMEX channel device
    bare = read(Path("/proc/devices"), tmp_path / "none", [])
    assert bare.major is None
    assert "registered no nvidia-caps-imex-channels" in assess(bare, None, "x", "/d").message


def test_the_imex_daemon_is_a_real_root_process(tmp_path):
    from nodecheck.checks.host.services import judge_service
    from nodecheck.probes import host

    daemon = tmp_path / "nvidia-imex"
    shutil.copy("/bin/sleep", daemon)
    proc = subprocess.Popen([str(daemon), "60"])
    try:
        procs = host.processes(Path("/proc"), with_cgroup=False).values()
        assert judge_service("nvidia-imex", "root", 0, procs) == (Status.PASS, "running")
    finally:
        proc.kill()
        proc.wait()
    procs = host.processes(Path("/proc"), with_cgroup=False).values()
    assert judge_service("nvidia-imex", "root", 0, procs)[0] is Status.FAIL


def test_gpu_fabric_judges_imex_on_a_node_of_a_multi_node_domain():
    """auto: the GB200 tray registered in a domain (a cluster UUID), so IMEX is judged; this
    machine has neither the daemon nor the device: a FAIL, report-only until enabled."""
    results = fabric("gb200-healthy.json", imex="auto")
    [imex] = [r for r in results if r.component == "imex"]
    assert imex.status is Status.FAIL and imex.message.startswith("nvidia-imex not running")
    assert (Status.WARN, "imex", "report-only: " + imex.message) in judged(results)
    # an HGX H100 has no multi-node domain: IMEX is not asked there
    assert all(r.component != "imex" for r in fabric("h100-healthy.json", imex="auto"))


def test_nvlink_c2c_of_a_grace_part(tmp_path):
    """gpu.nvlink on the GB200 tray: 18 NVLinks with NVLink5 counters; a C2C link NVML
    reports inactive FAILs that GPU, report-only until the site enables the signal."""
    nvlink = all_checks()["gpu.nvlink"]

    def run(fixture: str) -> list[CheckResult]:
        nvml.clear_cache()
        ctx = make_ctx(
            options=options_of(nvlink),
            nvml=f"replay:{NVML_FIXTURES}/{fixture}",
            state_dir=tmp_path / "state",
        )
        return list(nvlink.func(ctx))

    [healthy] = run("gb200-healthy.json")
    assert (healthy.status, healthy.message) == (Status.PASS, "4 GPUs: 18 NVLinks active")
    results = run("gb200-c2c-link-down.json")
    [c2c] = [r for r in results if r.status is Status.FAIL]
    assert (c2c.component, c2c.message) == ("gpu1", "NVLink-C2C link 4 inactive (9/10 active)")
    rules = {nvlink.id: ReportOnly.resolve(None, nvlink.new_signals)}
    assert report_only([c2c], rules)[0].status is Status.WARN
    rules = {nvlink.id: ReportOnly.resolve(False, nvlink.new_signals)}
    assert report_only([c2c], rules)[0].status is Status.FAIL


def test_expected_deep_figures_of_the_blackwell_parts():
    """The deep tier's table (checks/deep/expected.py) by the names NVML gives the parts;
    a model not in it keeps the node-median rule, as does GB200/GB300's host link (C2C)."""
    from nodecheck.checks.deep.common import reference
    from nodecheck.checks.deep.expected import lookup
    from nodecheck.probes.active.device import Device

    b300, gb200, gb300 = (
        lookup(n) for n in ("NVIDIA B300 SXM6 AC", "NVIDIA GB200", "NVIDIA GB300")
    )
    assert (b300.tflops["bf16"], b300.hbm_gbps, b300.nvlink_gbps) == (2250, 8000, 1800)
    assert (gb200.tflops["bf16"], gb200.tflops["tf32"], gb200.hbm_gbps) == (2500, 1250, 8000)
    assert gb300.tflops == gb200.tflops and gb300.nvlink_link_gbps == 100
    assert lookup("NVIDIA RTX PRO 6000 Blackwell Server Edition") is None
    ctx = make_ctx(options={"min_fraction": 0.7})
    dev = Device(index=0, kind="cuda", name="NVIDIA GB200")
    assert reference(ctx, dev, "hbm_gbps", 0.7).expected == 8000
    assert reference(ctx, dev, "host_gbps", 0.7).expected is None  # NVLink-C2C: node median


def test_report_only_results_are_counted_in_the_history_and_the_metrics(tmp_path):
    """The metric nodecheck_check_report_only comes from the history's last run of each
    check (store/history.py), rewritten into the node_exporter textfile (store/metrics.py)."""
    from nodecheck.store import history, metrics

    results = fabric("gb200-clique-split.json") + fabric("gb200-fabric-in-progress.json")
    rules = {FABRIC.id: ReportOnly.resolve(None, FABRIC.new_signals)}
    held = report_only(results, rules)
    rec = history.RunRecord(1.7e9, "health", None, "WARN", "none", 0.2, tuple(held))

    def add(h: history.History) -> dict:
        with h.write():
            h.add_run(rec, history.Retention())
        return h.last()

    last = history.with_history(tmp_path, add)
    assert last["checks"]["gpu.fabric"]["report_only"] == 5  # gpu3 split off, 4 not registered
    text = metrics.render("gb001", last, {}, None).decode()
    assert 'nodecheck_check_report_only{check="gpu.fabric",node="gb001"} 5.0' in text


def test_the_cluster_uuid_as_nvml_gives_it():
    """nvmlGpuFabricInfo_v3_t.clusterUuid: 16 unsigned chars, all zero without a domain."""
    import uuid

    from nodecheck.probes.nvml.real import _uuid_text

    assert _uuid_text(list(uuid.UUID(DOMAIN).bytes)) == DOMAIN
    assert _uuid_text([0] * 16) is None and _uuid_text(None) is None


@pytest.mark.parametrize(
    ("setting", "signals", "held"),
    [
        (None, ["nvl_domain"], True),  # not set: the declared new signals only report
        (None, ["nvl_domain", "replay"], False),  # resting on an old signal too: drains
        (None, [], False),  # no signal: an old judgement, drains as ever
        (False, ["nvl_domain"], False),  # the site enabled the check
        (["imex"], ["nvl_domain"], False),  # only the listed signals stay report-only
        (["imex", "nvl_domain"], ["nvl_domain"], True),
        (True, [], True),  # report_only = true: every FAIL of the check reports
    ],
)
def test_the_report_only_rule(setting, signals, held):
    fail = CheckResult("gpu.fabric", Status.FAIL, "x", "gpu0", {"signals": signals})
    ok = CheckResult("gpu.fabric", Status.WARN, "w", "gpu1", {"signals": signals})
    other = CheckResult("nodecheck.state", Status.FAIL, "hung", "/var/lib/nodecheck")
    rules = {"gpu.fabric": ReportOnly.resolve(setting, FABRIC.new_signals)}
    out = report_only([fail, ok, other], rules)
    assert out[0].status is (Status.WARN if held else Status.FAIL)
    assert out[0].values.get("report_only", False) is held
    assert out[1:] == [ok, other]  # a WARN, and a check without a rule, are left as they are


def test_explain_names_a_checks_new_signals(capsys):
    from nodecheck.entry.cli import main

    assert main(["explain", "gpu.nvlink"]) == 0
    out = capsys.readouterr().out
    assert "new signals, report-only until the site sets report_only:" in out
    assert "  c2c: GH200/GB200/GB300: an NVLink-C2C link not active" in out


def test_report_only_may_name_an_old_signal_of_the_check_too():
    """gpu.nvlink's per-counter list, as it was before report_only became a common key:
    a legacy counter may be held back as well; a name the check does not know is refused."""
    from nodecheck.run.config import parse_config
    from nodecheck.run.config_file import ConfigError

    registry = all_checks()
    config = parse_config({"checks": {"gpu.nvlink": {"report_only": ["replay"]}}}, None, registry)
    assert config.for_node("n1", registry).checks["gpu.nvlink"].report_only == ("replay",)
    with pytest.raises(ConfigError, match=r"unknown signals \['flits'\]"):
        parse_config({"checks": {"gpu.nvlink": {"report_only": ["flits"]}}}, None, registry)
    with pytest.raises(ConfigError, match="expected true, false or a list"):
        parse_config({"checks": {"gpu.fabric": {"report_only": "yes"}}}, None, registry)
