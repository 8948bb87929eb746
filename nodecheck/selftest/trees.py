"""Canary /sys and /proc trees, with the kernel's own file names and value formats.

The fabric and host checks read a configurable root (`sysfs_root`, `procfs_root`), so a
canary is a small tree in the selftest's private directory. The layout and formats are
those of tests/fixtures/sysfs.py (the kernel's drivers/infiniband/core/sysfs.c and
Documentation/ABI for /sys/class/infiniband and /sys/class/net; proc(5) for /proc), which
the package cannot import: a copy of the part the canaries need.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nodecheck.probes.fabric.counters import DEFAULT_COUNTERS

STATES = {1: "DOWN", 2: "INIT", 3: "ARMED", 4: "ACTIVE"}
PHYS_STATES = {2: "Polling", 3: "Disabled", 5: "LinkUp"}
# The port counters mlx5 exposes under ports/N/counters (PMA PortCounters), and the
# hw_counters ib.counters watches by default.
IB_COUNTERS = (*DEFAULT_COUNTERS, "port_xmit_data", "port_rcv_data")
HW_COUNTERS = ("out_of_buffer", "local_ack_timeout_err", "rx_icrc_encapsulated")
NDR_4X = "400 Gb/sec (4X NDR)"
ARPHRD_ETHER, ARPHRD_INFINIBAND = 1, 32


def _write(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


@dataclass(frozen=True)
class Port:
    """One HCA port as the canary wants it (rate as the kernel prints it)."""

    device: str
    port: int
    rate: str = NDR_4X
    link_layer: str = "InfiniBand"
    state: int = 4
    phys_state: int = 5
    counters: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class NetDev:
    name: str
    operstate: str = "up"
    carrier: int = 1
    speed: int = 400000
    mtu: int = 4092
    kind: int = ARPHRD_INFINIBAND


def sysfs_tree(
    root: Path,
    ports: Iterable[Port] = (),
    netdevs: Iterable[NetDev] = (),
    slurm_cgroup: bool = False,
) -> Path:
    """A /sys with these HCA ports (class/infiniband/<dev> -> devices/.../infiniband/<dev>),
    netdevs (class/net/<name>), and with `slurm_cgroup`, the cgroup v2 scope slurmstepd
    makes under proctrack/cgroup (how host.procs knows jobs are in cgroups)."""
    (root / "class" / "infiniband").mkdir(parents=True, exist_ok=True)
    (root / "class" / "net").mkdir(parents=True, exist_ok=True)
    buses: dict[str, Path] = {}
    for port in ports:
        if port.device not in buses:
            buses[port.device] = _hca(root, port.device, 0x1A + len(buses))
        pdir = buses[port.device] / "ports" / str(port.port)
        _write(pdir / "state", f"{port.state}: {STATES[port.state]}")
        _write(pdir / "phys_state", f"{port.phys_state}: {PHYS_STATES[port.phys_state]}")
        _write(pdir / "rate", port.rate)
        _write(pdir / "link_layer", port.link_layer)
        _write(pdir / "lid", f"0x{0x10 + port.port + 4 * len(buses):x}")
        _write(pdir / "sm_lid", "0x1")
        for name in IB_COUNTERS:
            _write(pdir / "counters" / name, port.counters.get(name, 0))
        for name in HW_COUNTERS:
            _write(pdir / "hw_counters" / name, port.counters.get(name, 0))
    for number, dev in enumerate(netdevs):
        ndir = root / "devices" / "pci0000:00" / f"0000:{0x60 + number:02x}:00.0" / "net" / dev.name
        for attr, value in (
            ("operstate", dev.operstate),
            ("carrier", dev.carrier),
            ("speed", dev.speed),
            ("mtu", dev.mtu),
            ("type", dev.kind),
            ("duplex", "full"),
        ):
            _write(ndir / attr, value)
        _link(root / "class" / "net" / dev.name, ndir)
    if slurm_cgroup:
        (root / "fs" / "cgroup" / "system.slice" / "slurmstepd.scope").mkdir(parents=True)
    return root


def set_counters(root: Path, device: str, port: int, rises: Mapping[str, int]) -> None:
    """Add `rises` to a port's counters (what a marginal cable does during a job)."""
    pdir = root / "class" / "infiniband" / device / "ports" / str(port)
    for name, rise in rises.items():
        sub = "hw_counters" if name in HW_COUNTERS else "counters"
        path = pdir / sub / name
        path.write_text(f"{int(path.read_text()) + rise}\n")


def _hca(root: Path, name: str, bus: int) -> Path:
    pci = root / "devices" / "pci0000:00" / f"0000:{bus:02x}:00.0"
    for attr, value in (("numa_node", 0), ("local_cpulist", "0-31"), ("vendor", "0x15b3")):
        _write(pci / attr, value)
    dev = pci / "infiniband" / name
    index = bus - 0x1A
    guid = f"b83f:d203:00{index:02x}:{0x1000 + index:04x}"
    for attr, value in (
        ("fw_ver", "28.39.1002"),
        ("board_id", "MT_0000000838"),
        ("node_guid", guid),
        ("node_type", "1: CA"),
        ("hca_type", "MT4129"),
    ):
        _write(dev / attr, value)
    _link(dev / "device", pci)
    _link(root / "class" / "infiniband" / name, dev)
    return dev


@dataclass(frozen=True)
class Proc:
    """One /proc/PID: enough for psutil (stat, status) and host.procs (comm, cgroup)."""

    pid: int
    comm: str
    uid: int = 0
    ppid: int = 1
    state: str = "S"
    cgroup: str = "0::/system.slice/cron.service\n"


# A DGX H100's 2 TiB in /proc/meminfo's format (proc(5)); the test suite's host.mem figure.
MEMTOTAL_KB = 2113928192
BOOT_ID = "0e5d7c1a-5b7e-4f1c-9a51-3c2f8e6d4b10"


def meminfo(total_kb: int = MEMTOTAL_KB, available_kb: int = 2000000000) -> str:
    return (
        f"MemTotal:       {total_kb} kB\n"
        f"MemFree:        {available_kb - 1000000} kB\n"
        f"MemAvailable:   {available_kb} kB\n"
        "Buffers:          123456 kB\n"
        "Cached:         1000000 kB\n"
        "HugePages_Total:       0\n"
    )


def procfs_tree(
    root: Path, procs: Iterable[Proc] = (), mounts: str = "", memory: str | None = None
) -> Path:
    """A /proc with these processes, this mount table (self/mounts), meminfo and the boot
    id the stateful checks key their readings by."""
    _write(root / "stat", "cpu  0 0 0 0 0 0 0 0 0 0\nbtime 1764590000")
    _write(root / "sys" / "kernel" / "random" / "boot_id", BOOT_ID)
    (root / "self").mkdir(parents=True, exist_ok=True)
    (root / "self" / "mounts").write_text(mounts)
    if memory is not None:
        (root / "meminfo").write_text(memory)
    procs = list(procs)
    if not any(proc.pid == 1 for proc in procs):  # every Linux /proc has init (psutil relies on it)
        procs.insert(0, Proc(1, "systemd", ppid=0, cgroup="0::/init.scope\n"))
    for proc in procs:
        d = root / str(proc.pid)
        # stat: all 52 fields, starttime (22) in clock ticks after boot, as the kernel has it.
        fields = [proc.state, proc.ppid, proc.pid, proc.pid, 0, -1, 4194560]
        fields += [0] * 12 + [1000 + proc.pid % 1000] + [0] * 30
        _write(d / "stat", f"{proc.pid} ({proc.comm}) {' '.join(map(str, fields))}")
        uid = proc.uid
        _write(d / "status", f"Name:\t{proc.comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}")
        _write(d / "comm", proc.comm[:15])
        (d / "environ").write_bytes(b"")
        (d / "cgroup").write_text(proc.cgroup)
    return root
