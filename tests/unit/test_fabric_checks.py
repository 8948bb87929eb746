"""ib.port, ib.counters and net.link against fake sysfs trees (tests/fixtures/sysfs.py)."""

from __future__ import annotations

import pytest
from helpers import make_ctx, options_of

import nodecheck.checks.fabric  # noqa: F401  (registers the fabric checks)
from nodecheck.checks.context import JobInfo
from nodecheck.checks.registry import all_checks, with_defaults
from nodecheck.core.reason import format_reason
from nodecheck.core.results import Status
from tests.fixtures.sysfs import FakeSysfs, healthy_node

REGISTRY = all_checks()
NDR = "400 Gb/sec (4X NDR)"
FOUR = ["mlx5_0/1", "mlx5_1/1", "mlx5_2/1", "mlx5_3/1"]


def run(check_id, root, phase="prolog", job="812", state_dir=None, **options):
    chk = REGISTRY[check_id]
    ctx = make_ctx(
        phase=phase,
        options=options_of(chk, **options),
        job=JobInfo(job_id=job, uid=1000, user="alice") if job else JobInfo(),
        sysfs_root=root,
        state_dir=state_dir or root.parent / "state",
    )
    return list(chk.func(ctx))


def by_component(results):
    return {r.component: r for r in results}


@pytest.fixture
def node(tmp_path):
    return healthy_node(tmp_path / "sys", hcas=4)


# ------------------------------------------------------------------------------- ib.port


def test_all_healthy(node):
    results = run("ib.port", node.root, ports=FOUR, rate=NDR, link_layer="InfiniBand")
    assert [r.component for r in results] == FOUR
    assert all(r.status is Status.PASS for r in results), results
    first = results[0]
    assert first.message == "ACTIVE LinkUp, 400 Gb/sec (4X NDR)"
    assert first.values["fw_ver"] == "28.39.1002"
    assert first.values["numa_node"] == 0
    assert first.values["state"] == "4: ACTIVE"


@pytest.mark.parametrize(("phys", "text"), [(3, "3: Disabled"), (2, "2: Polling")])
def test_port_down(node, phys, text):
    node.set_port("mlx5_2", 1, state=1, phys_state=phys)
    got = by_component(run("ib.port", node.root, ports=FOUR, rate=NDR))
    bad = got["mlx5_2/1"]
    assert bad.status is Status.FAIL
    assert bad.message == f"state 1: DOWN, phys_state {text} (expected 4: ACTIVE, 5: LinkUp)"
    assert got["mlx5_1/1"].status is Status.PASS


def test_port_init_without_subnet_manager(node):
    node.set_port("mlx5_0", 1, state=2, phys_state=5)
    [bad] = run("ib.port", node.root, ports=["mlx5_0/1"])
    assert bad.status is Status.FAIL
    assert "state 2: INIT, phys_state 5: LinkUp" in bad.message


def test_half_width_port(node):
    node.set_port("mlx5_1", 1, width=2)
    got = by_component(run("ib.port", node.root, ports=FOUR, rate=NDR))
    bad = got["mlx5_1/1"]
    assert bad.status is Status.FAIL
    assert bad.message == "rate 200 Gb/sec (2X NDR) below expected 400 Gb/sec (4X NDR)"
    assert bad.values["rate"] == "200 Gb/sec (2X NDR)"


def test_reduced_width_at_same_total_rate_still_fails(node):
    # 2X NDR and 4X HDR are both 200 Gb/s; a 4X cable trained on two lanes is still broken.
    node.set_port("mlx5_0", 1, speed="NDR", width=2)
    [bad] = run("ib.port", node.root, ports=["mlx5_0/1"], rate="200 Gb/sec (4X HDR)")
    assert bad.status is Status.FAIL
    assert bad.message.startswith("width 2X below expected 4X")
    assert "200 Gb/sec (2X NDR)" in bad.message


def test_lower_speed_port_and_its_drain_reason(node):
    node.set_port("mlx5_2", 1, speed="HDR")
    got = by_component(run("ib.port", node.root, ports=FOUR, rate=NDR))
    bad = got["mlx5_2/1"]
    assert bad.status is Status.FAIL
    assert bad.message == "rate 200 Gb/sec (4X HDR) below expected 400 Gb/sec (4X NDR)"
    reason = format_reason([with_defaults(bad, REGISTRY)], "prolog", "812")
    assert reason == (
        "nodecheck: ib.port mlx5_2/1: rate 200 Gb/sec (4X HDR) below expected "
        "400 Gb/sec (4X NDR) [prolog job 812 sev=medium act=check-cable]"
    )


def test_faster_than_expected_is_only_a_warning(node):
    [warn] = run("ib.port", node.root, ports=["mlx5_0/1"], rate="200 Gb/sec (4X HDR)")
    assert warn.status is Status.WARN
    assert "differs from expected" in warn.message


def test_per_port_rate_override(node):
    node.set_port("mlx5_3", 1, speed="HDR")
    results = run(
        "ib.port", node.root, ports=FOUR, rate=NDR, rates={"mlx5_3/1": "200 Gb/sec (4X HDR)"}
    )
    assert all(r.status is Status.PASS for r in results)


def test_missing_hca_and_missing_port(node):
    node.remove_hca("mlx5_3")
    got = by_component(run("ib.port", node.root, ports=[*FOUR, "mlx5_0/2"], rate=NDR))
    assert got["mlx5_3/1"].status is Status.FAIL
    assert got["mlx5_3/1"].message == "HCA mlx5_3 missing"
    assert got["mlx5_0/2"].status is Status.FAIL
    assert got["mlx5_0/2"].message == "port 2 missing on mlx5_0"


def test_expected_count(node):
    assert all(r.status is Status.PASS for r in run("ib.port", node.root, count=4))
    node.remove_hca("mlx5_1")
    got = by_component(run("ib.port", node.root, count=4, link_layer="InfiniBand"))
    assert got["ib"].status is Status.FAIL
    assert got["ib"].message.startswith("3 of 4 expected InfiniBand ports present")
    node.set_port("mlx5_0", 1, state=1, phys_state=2)
    got = by_component(run("ib.port", node.root, count=3))
    assert got["mlx5_0/1"].status is Status.FAIL


def test_count_ignores_other_link_layers(tmp_path):
    fake = healthy_node(tmp_path / "sys", hcas=2, roce=1)
    results = run("ib.port", fake.root, count=2, link_layer="InfiniBand")
    assert sorted(r.component for r in results) == ["mlx5_0/1", "mlx5_1/1"]
    assert all(r.status is Status.PASS for r in results)
    got = by_component(run("ib.port", fake.root, count=2, link_layer="Ethernet"))
    assert got["ib"].status is Status.FAIL
    assert "1 of 2 expected Ethernet ports" in got["ib"].message


def test_roce_port_and_link_layer_mismatch(tmp_path):
    fake = FakeSysfs(tmp_path / "sys")
    fake.add_hca("mlx5_0", link_layer="Ethernet", speed="HDR", width=4, netdev="eth2")
    fake.add_hca("mlx5_1", link_layer="Ethernet", speed="HDR", width=4, netdev="eth3")
    fake.set_port("mlx5_1", 1, link_layer="InfiniBand")
    got = by_component(
        run(
            "ib.port",
            fake.root,
            ports=["mlx5_0/1", "mlx5_1/1"],
            link_layer="Ethernet",
            rate="200 Gb/sec (4X HDR)",
        )
    )
    assert got["mlx5_0/1"].status is Status.PASS
    assert got["mlx5_1/1"].status is Status.FAIL
    assert got["mlx5_1/1"].message == "link layer InfiniBand, expected Ethernet"


def test_no_expectation_down_port_is_a_warning_and_no_hca_a_skip(tmp_path, node):
    node.set_port("mlx5_1", 1, state=1, phys_state=3)
    got = by_component(run("ib.port", node.root))
    assert got["mlx5_1/1"].status is Status.WARN
    assert got["mlx5_0/1"].status is Status.PASS
    empty = FakeSysfs(tmp_path / "empty")
    [skip] = run("ib.port", empty.root)
    assert skip.status is Status.SKIP


@pytest.mark.parametrize(
    ("how", "reason"), [("eio", "Input/output error"), ("dir", "Is a directory")]
)
def test_unreadable_state_is_a_device_fault(node, how, reason):
    node.break_file(node.port_path("mlx5_0", 1) / "state", how)
    [bad] = run("ib.port", node.root, ports=["mlx5_0/1"])
    assert bad.status is Status.FAIL
    assert bad.message == f"cannot read state: {reason}"


def test_unparsable_values_are_our_error(node):
    node.set_port("mlx5_0", 1, rate="lightspeed")
    [bad] = run("ib.port", node.root, ports=["mlx5_0/1"], rate=NDR)
    assert bad.status is Status.ERROR


@pytest.mark.parametrize(
    "options",
    [
        {"rate": "400G"},
        {"ports": ["mlx5_0"]},
        {"link_layer": "Ether"},
    ],
)
def test_bad_options_are_errors(node, options):
    [err] = run("ib.port", node.root, **options)
    assert err.status is Status.ERROR


# ------------------------------------------------------------------------------ net.link


def test_net_link(tmp_path):
    fake = FakeSysfs(tmp_path / "sys")
    fake.add_netdev("eth2", speed=200000, mtu=9000)
    fake.add_netdev("eth3", speed=100000, mtu=9000)
    fake.add_netdev("eth4", operstate="down", carrier=0)
    fake.add_netdev("eth5", operstate="down", carrier=None, speed=None)
    fake.add_netdev("eth6", operstate="up", carrier=0)
    fake.add_netdev("ib0", operstate="unknown", carrier=1, speed=400000, type=32, mtu=4092)
    fake.add_netdev("eth7", speed=200000, mtu=1500)
    fake.add_netdev("eth8", speed=-1)
    names = ["eth2", "eth3", "eth4", "eth5", "eth6", "ib0", "eth7", "eth8", "eth9"]
    got = by_component(
        run("net.link", fake.root, devices=names, speed=200000, speeds={"ib0": 400000})
    )
    assert got["eth2"].status is Status.PASS
    assert got["eth2"].message == "up, 200000 Mb/s"
    assert got["eth3"].status is Status.FAIL
    assert got["eth3"].message == "speed 100000 Mb/s below expected 200000 Mb/s"
    assert got["eth4"].message == "operstate down, carrier 0"
    assert got["eth5"].status is Status.FAIL
    assert "unreadable" in got["eth5"].message
    assert got["eth6"].message == "no carrier (operstate up)"
    assert got["ib0"].status is Status.PASS
    assert got["eth7"].status is Status.PASS
    assert got["eth8"].status is Status.WARN
    assert got["eth9"].status is Status.FAIL
    assert got["eth9"].message == "netdev missing"
    mtu = by_component(run("net.link", fake.root, devices=["eth7"], mtu=9000))
    assert mtu["eth7"].status is Status.FAIL
    assert mtu["eth7"].message == "mtu 1500, expected 9000"


def test_net_link_nothing_configured(tmp_path):
    [skip] = run("net.link", FakeSysfs(tmp_path / "sys").root)
    assert skip.status is Status.SKIP


def test_roce_netdev_created_with_its_hca(tmp_path):
    fake = healthy_node(tmp_path / "sys", hcas=0, roce=2)
    got = by_component(run("net.link", fake.root, devices=["eth2", "eth3"], speed=200000))
    assert all(r.status is Status.PASS for r in got.values())


# -------------------------------------------------------------------------------- config


def test_fabric_options_in_toml(tmp_path):
    import tomllib

    from nodecheck.run.config import parse_config
    from nodecheck.run.config_file import ConfigError

    text = f"""
[checks."ib.counters"]
fail_rise = {{ link_downed = 0, symbol_error = 50 }}

[[node_class]]
name = "h100"
match = ["gpu[001-004]"]
sysfs_root = "{tmp_path}"
[node_class.checks."ib.port"]
ports = ["mlx5_0/1", "mlx5_1/1"]
rate = "400 Gb/sec (4X NDR)"
link_layer = "InfiniBand"
[node_class.checks."net.link"]
devices = ["eth2"]
speed = 200000
"""
    config = parse_config(tomllib.loads(text), None, REGISTRY)
    node = config.for_node("gpu002", REGISTRY)
    assert node.settings.sysfs_root == tmp_path
    assert node.checks["ib.port"].options["ports"] == ["mlx5_0/1", "mlx5_1/1"]
    assert node.checks["ib.counters"].options["fail_rise"] == {"link_downed": 0, "symbol_error": 50}
    assert node.checks["fabric.peers"].enabled is False
    assert node.checks["fabric.peers"].phases == frozenset({"prolog"})
    with pytest.raises(ConfigError, match="link_downed"):
        parse_config(
            tomllib.loads('[checks."ib.counters"]\nfail_rise = { link_downed = "many" }'),
            None,
            REGISTRY,
        )
    with pytest.raises(ConfigError, match="unknown option"):
        parse_config(tomllib.loads('[checks."ib.port"]\nspeed = 1'), None, REGISTRY)
