"""Readers of /sys/class/infiniband and /sys/class/net under a configurable sysfs root.

Formats are the kernel's own (drivers/infiniband/core/sysfs.c, net/core/net-sysfs.c):

    ports/N/state        "4: ACTIVE"           ("%d: %s": NOP DOWN INIT ARMED ACTIVE ACTIVE_DEFER)
    ports/N/phys_state   "5: LinkUp"           ("%u: %s": Sleep Polling Disabled
                                                PortConfigurationTraining LinkUp
                                                LinkErrorRecovery "Phy Test")
    ports/N/rate         "400 Gb/sec (4X NDR)" ("%d%s Gb/sec (%dX%s)"; ".5" for half Gb/s;
                                                speed "" on old kernels for SDR)
    ports/N/link_layer   "InfiniBand" | "Ethernet"
    ports/N/lid          "0x1a"
    ports/N/counters/*   decimal integers (PMA counters; error counters saturate, never wrap)
    ports/N/hw_counters/* decimal integers (driver counters, e.g. mlx5 out_of_buffer)
    net/<dev>/operstate  "up" | "down" | "unknown" | "dormant" | "lowerlayerdown" | ...
    net/<dev>/carrier    "1" | "0"; reading it on an interface that is not running gives EINVAL
    net/<dev>/speed      Mb/s, "-1" when unknown; EINVAL when the interface is not running

Every read is bounded (one read of at most 4 KiB) and reports failures as `ReadFailure`
values instead of raising, so a check can say which file failed and how.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from nodecheck.core.progress import note

MAX_READ = 4096
# Errors that mean *we* may not read the file (wrong user, hardened sysfs), not that the
# device failed to answer. Reported as ERROR by the checks, everything else as a device fault.
ACCESS_ERRNOS = frozenset({errno.EACCES, errno.EPERM})
# A device without a Performance Management Agent (process_mad) has no PMA counters. How that
# shows depends on the kernel (docs/fabric.md, "sysfs quirks"): older ones print this text in
# every counters/* file, later ones fail the read with ENOSYS, newer ones have no counters/.
NO_PMA_TEXT = "N/A (no PMA)"
UNAVAILABLE_ERRNOS = frozenset({errno.ENOSYS, errno.EOPNOTSUPP})


@dataclass(frozen=True)
class ReadFailure:
    """A sysfs attribute that exists but could not be read (or is missing)."""

    path: str
    errno: int
    reason: str

    @property
    def missing(self) -> bool:
        return self.errno == errno.ENOENT

    @property
    def access(self) -> bool:
        return self.errno in ACCESS_ERRNOS

    @property
    def unavailable(self) -> bool:
        """The device does not offer this attribute at all (not a fault, not ours)."""
        return self.errno in UNAVAILABLE_ERRNOS

    def __str__(self) -> str:
        return self.reason


def read_attr(path: Path) -> str | ReadFailure:
    """One sysfs attribute, stripped; a ReadFailure instead of raising.

    Reads once, at most 4 KiB, as sysfs hands out a whole attribute in one read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return _failure(path, exc)
    try:
        data = os.read(fd, MAX_READ)
    except OSError as exc:
        return _failure(path, exc)
    finally:
        os.close(fd)
    return data.decode("ascii", errors="replace").strip()


def _failure(path: Path, exc: OSError) -> ReadFailure:
    code = exc.errno or errno.EIO
    reason = "missing" if code == errno.ENOENT else (exc.strerror or os.strerror(code))
    return ReadFailure(str(path), code, reason)


def read_int(path: Path) -> int | ReadFailure | str:
    """An integer attribute; the raw text (str) when it does not parse."""
    raw = read_attr(path)
    if isinstance(raw, ReadFailure):
        return raw
    try:
        return int(raw, 0) if raw.startswith("0x") else int(raw)
    except ValueError:
        return raw


# ---------------------------------------------------------------------------- InfiniBand

_CODED = re.compile(r"^(\d+):\s*(.*)$")
_RATE = re.compile(r"^(\d+(?:\.5)?) Gb/sec \((\d+)X ?([A-Z0-9]*)\)$")

STATE_ACTIVE = 4
PHYS_LINKUP = 5


@dataclass(frozen=True)
class Coded:
    """`4: ACTIVE` as (4, "ACTIVE")."""

    code: int
    name: str

    def __str__(self) -> str:
        return f"{self.code}: {self.name}"


def parse_coded(text: str) -> Coded | None:
    m = _CODED.match(text.strip())
    return Coded(int(m.group(1)), m.group(2)) if m else None


@dataclass(frozen=True, order=True)
class Rate:
    """`400 Gb/sec (4X NDR)` as gbps=400.0, width=4, speed="NDR" ("" for old-kernel SDR)."""

    gbps: float
    width: int
    speed: str

    def __str__(self) -> str:
        gb = f"{self.gbps:g}"
        return f"{gb} Gb/sec ({self.width}X{' ' + self.speed if self.speed else ''})"

    @property
    def lane_gbps(self) -> float:
        return self.gbps / self.width if self.width else 0.0


def parse_rate(text: str) -> Rate | None:
    m = _RATE.match(text.strip())
    if not m:
        return None
    return Rate(float(m.group(1)), int(m.group(2)), m.group(3))


@dataclass
class IbPort:
    """One InfiniBand port as sysfs shows it; unreadable attributes as ReadFailure."""

    device: str
    port: int
    path: Path
    state: Coded | ReadFailure | str | None = None
    phys_state: Coded | ReadFailure | str | None = None
    rate: Rate | ReadFailure | str | None = None
    link_layer: str | ReadFailure | None = None
    lid: str | ReadFailure | None = None

    @property
    def name(self) -> str:
        return f"{self.device}/{self.port}"


@dataclass
class IbDevice:
    """One HCA's identity (firmware, board, GUID, PCI address, NUMA node) and ports."""

    name: str
    path: Path
    ports: list[int] = field(default_factory=list)
    fw_ver: str | None = None
    board_id: str | None = None
    node_guid: str | None = None
    pci_address: str | None = None
    numa_node: int | None = None
    local_cpulist: str | None = None


def ib_class_dir(sysfs_root: Path) -> Path:
    return sysfs_root / "class" / "infiniband"


def list_ib_devices(sysfs_root: Path) -> list[str]:
    """Names under /sys/class/infiniband, naturally sorted (mlx5_2 before mlx5_10)."""
    base = ib_class_dir(sysfs_root)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    return sorted(names, key=natural_key)


def natural_key(text: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def _text(value: str | ReadFailure) -> str | None:
    return value if isinstance(value, str) else None


def read_ib_device(sysfs_root: Path, name: str) -> IbDevice | None:
    """Identity of one HCA and its port numbers; None when the device does not exist."""
    path = ib_class_dir(sysfs_root) / name
    if not path.exists():
        return None
    note(f"reading {name} identity")
    dev = IbDevice(name=name, path=path)
    try:
        dev.ports = sorted(int(p) for p in os.listdir(path / "ports") if p.isdigit())
    except OSError:
        dev.ports = []
    dev.fw_ver = _text(read_attr(path / "fw_ver"))
    dev.board_id = _text(read_attr(path / "board_id"))
    dev.node_guid = _text(read_attr(path / "node_guid"))
    pci = path / "device"
    try:
        dev.pci_address = os.path.basename(os.path.realpath(pci)) if pci.exists() else None
    except OSError:
        dev.pci_address = None
    numa = read_int(pci / "numa_node")
    dev.numa_node = numa if isinstance(numa, int) else None
    dev.local_cpulist = _text(read_attr(pci / "local_cpulist"))
    return dev


def read_ib_port(sysfs_root: Path, device: str, port: int) -> IbPort | None:
    """State, physical state, rate, link layer and LID of one port; None when absent."""
    path = ib_class_dir(sysfs_root) / device / "ports" / str(port)
    if not path.is_dir():
        return None
    note(f"reading {device}/{port} state")
    out = IbPort(device=device, port=port, path=path)
    out.state = _coded(read_attr(path / "state"))
    out.phys_state = _coded(read_attr(path / "phys_state"))
    raw_rate = read_attr(path / "rate")
    out.rate = raw_rate if isinstance(raw_rate, ReadFailure) else (parse_rate(raw_rate) or raw_rate)
    out.link_layer = read_attr(path / "link_layer")
    out.lid = read_attr(path / "lid")
    return out


def _coded(raw: str | ReadFailure) -> Coded | ReadFailure | str:
    if isinstance(raw, ReadFailure):
        return raw
    return parse_coded(raw) or raw


def read_port_counters(
    port_path: Path, names: list[str], subdir: str
) -> dict[str, int | ReadFailure | str]:
    """The named counters of one port from `counters/` or `hw_counters/`.

    Missing files come back as a ReadFailure with `.missing` set, so the caller decides
    whether absence matters (hw_counters differ between drivers and firmware); a counter the
    device has no PMA for ("N/A (no PMA)", ENOSYS) as one with `.unavailable` set.
    """
    base = port_path / subdir
    return {name: _counter(base / name) for name in names}


def _counter(path: Path) -> int | ReadFailure | str:
    value = read_int(path)
    if value == NO_PMA_TEXT:
        return ReadFailure(str(path), errno.ENOSYS, NO_PMA_TEXT)
    return value


def port_netdevs(port_path: Path) -> list[str]:
    """RoCE: the netdevs bound to this port's GIDs (ports/N/gid_attrs/ndevs/*)."""
    found: list[str] = []
    try:
        entries = sorted(os.listdir(port_path / "gid_attrs" / "ndevs"), key=natural_key)
    except OSError:
        return found
    for entry in entries[:16]:
        raw = read_attr(port_path / "gid_attrs" / "ndevs" / entry)
        if isinstance(raw, str) and raw and raw not in found:
            found.append(raw)
    return found


# ------------------------------------------------------------------------------- netdevs


@dataclass
class NetDev:
    """One network interface's link state from /sys/class/net."""

    name: str
    operstate: str | ReadFailure
    carrier: int | ReadFailure | str | None
    speed: int | ReadFailure | str | None
    mtu: int | ReadFailure | str | None
    type: int | ReadFailure | str | None


def read_netdev(sysfs_root: Path, name: str) -> NetDev | None:
    path = sysfs_root / "class" / "net" / name
    if not path.exists():
        return None
    note(f"reading netdev {name}")
    return NetDev(
        name=name,
        operstate=read_attr(path / "operstate"),
        carrier=read_int(path / "carrier"),
        speed=read_int(path / "speed"),
        mtu=read_int(path / "mtu"),
        type=read_int(path / "type"),
    )
