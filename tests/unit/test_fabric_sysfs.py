"""The sysfs readers against trees built by tests/fixtures/sysfs.py (real names and formats)."""

from __future__ import annotations

import errno

import pytest

from nodecheck.probes.fabric import sysfs as sysfs
from tests.fixtures.sysfs import FakeSysfs, healthy_node, rate_string


@pytest.mark.parametrize(
    ("speed", "width", "text"),
    [
        ("NDR", 4, "400 Gb/sec (4X NDR)"),
        ("NDR", 2, "200 Gb/sec (2X NDR)"),
        ("NDR", 1, "100 Gb/sec (1X NDR)"),
        ("HDR", 4, "200 Gb/sec (4X HDR)"),
        ("HDR", 2, "100 Gb/sec (2X HDR)"),
        ("EDR", 4, "100 Gb/sec (4X EDR)"),
        ("FDR", 4, "56 Gb/sec (4X FDR)"),
        ("FDR10", 4, "40 Gb/sec (4X FDR10)"),
        ("QDR", 4, "40 Gb/sec (4X QDR)"),
        ("SDR", 1, "2.5 Gb/sec (1X SDR)"),
        ("XDR", 4, "800 Gb/sec (4X XDR)"),
    ],
)
def test_rate_strings_match_the_kernel_and_parse_back(speed, width, text):
    assert rate_string(speed, width) == text
    rate = sysfs.parse_rate(text + "\n")
    assert rate is not None
    assert (rate.width, rate.speed) == (width, speed)
    assert str(rate) == text


def test_rate_parser_accepts_old_kernel_sdr_and_rejects_garbage():
    assert sysfs.parse_rate("10 Gb/sec (4X)") == sysfs.Rate(10.0, 4, "")
    assert sysfs.parse_rate("fast") is None
    assert sysfs.parse_rate("") is None


def test_coded_values():
    assert sysfs.parse_coded("4: ACTIVE\n") == sysfs.Coded(4, "ACTIVE")
    assert sysfs.parse_coded("7: Phy Test") == sysfs.Coded(7, "Phy Test")
    assert str(sysfs.Coded(5, "LinkUp")) == "5: LinkUp"
    assert sysfs.parse_coded("ACTIVE") is None


def test_healthy_tree_reads_back(tmp_path):
    healthy_node(tmp_path, hcas=2, roce=1)
    assert sysfs.list_ib_devices(tmp_path) == ["mlx5_0", "mlx5_1", "mlx5_2"]
    dev = sysfs.read_ib_device(tmp_path, "mlx5_1")
    assert dev is not None
    assert dev.ports == [1]
    assert dev.fw_ver == "28.39.1002"
    assert dev.numa_node == 1
    assert dev.pci_address == "0000:1b:00.0"
    port = sysfs.read_ib_port(tmp_path, "mlx5_0", 1)
    assert port is not None
    assert port.state == sysfs.Coded(4, "ACTIVE")
    assert port.phys_state == sysfs.Coded(5, "LinkUp")
    assert port.rate == sysfs.Rate(400.0, 4, "NDR")
    assert port.link_layer == "InfiniBand"
    roce = sysfs.read_ib_port(tmp_path, "mlx5_2", 1)
    assert roce is not None
    assert roce.link_layer == "Ethernet"
    assert sysfs.port_netdevs(roce.path) == ["eth2"]
    net = sysfs.read_netdev(tmp_path, "eth2")
    assert net is not None
    assert (net.operstate, net.carrier, net.speed, net.mtu) == ("up", 1, 200000, 9000)


def test_natural_sort_of_devices(tmp_path):
    fake = FakeSysfs(tmp_path)
    for name in ("mlx5_10", "mlx5_2", "mlx5_1"):
        fake.add_hca(name)
    assert sysfs.list_ib_devices(tmp_path) == ["mlx5_1", "mlx5_2", "mlx5_10"]


def test_missing_things(tmp_path):
    assert sysfs.list_ib_devices(tmp_path) == []
    assert sysfs.read_ib_device(tmp_path, "mlx5_0") is None
    fake = FakeSysfs(tmp_path)
    fake.add_hca("mlx5_0", ports=2)
    fake.remove_port("mlx5_0", 2)
    assert sysfs.read_ib_port(tmp_path, "mlx5_0", 2) is None
    fake.remove_hca("mlx5_0")
    assert sysfs.list_ib_devices(tmp_path) == []
    assert sysfs.read_netdev(tmp_path, "ib0") is None


def test_unreadable_counters_are_reported_not_raised(tmp_path):
    fake = FakeSysfs(tmp_path)
    fake.add_hca("mlx5_0", counters={"port_rcv_errors": 7})
    fake.break_file(fake.counter_path("mlx5_0", 1, "symbol_error"), "eio")
    fake.break_file(fake.counter_path("mlx5_0", 1, "link_downed"), "dir")
    got = sysfs.read_port_counters(
        fake.port_path("mlx5_0", 1),
        ["symbol_error", "link_downed", "port_rcv_errors", "no_such_counter"],
        "counters",
    )
    assert got["port_rcv_errors"] == 7
    assert isinstance(got["symbol_error"], sysfs.ReadFailure)
    assert got["symbol_error"].errno == errno.EIO
    assert got["link_downed"].errno == errno.EISDIR
    assert got["no_such_counter"].missing


def test_down_interface_carrier_is_unreadable(tmp_path):
    fake = FakeSysfs(tmp_path)
    fake.add_netdev("ib0", operstate="down", carrier=None, speed=None, type=32)
    net = sysfs.read_netdev(tmp_path, "ib0")
    assert net is not None
    assert net.operstate == "down"
    assert isinstance(net.carrier, sysfs.ReadFailure)
    assert isinstance(net.speed, sysfs.ReadFailure)
    assert net.type == 32


def test_builder_port_changes(tmp_path):
    fake = FakeSysfs(tmp_path)
    fake.add_hca("mlx5_0")
    fake.set_port("mlx5_0", 1, state=1, phys_state=3, width=2)
    text = (fake.port_path("mlx5_0", 1) / "state").read_text()
    assert text == "1: DOWN\n"
    assert (fake.port_path("mlx5_0", 1) / "phys_state").read_text() == "3: Disabled\n"
    assert (fake.port_path("mlx5_0", 1) / "rate").read_text() == "200 Gb/sec (2X NDR)\n"
    assert fake.bump_counter("mlx5_0", 1, "link_downed", 3) == 3
