"""The canaries: for each fast check, a known-good input and one or more known-bad ones.

A case builds its input in a private directory (an NVML snapshot to replay, a /sys or /proc
tree, a saved kernel log) and says which options it pins. What a canary pins is what
describes its own hardware (how many GPUs, which model, which ports, which log file);
the check's judgement (thresholds, severities, ignore lists) stays as the node has it, so
a site option that blinds a check to its textbook fault shows as a missed canary. Where a
check is told what the node has (ib.port's ports, net.link's devices, host.services'
daemons), the canary builds exactly that, so the node's own option values are exercised.

Where the data comes from: nvml_data.py, kernlogs.py and trees.py name their sources (the
project's real-data fixtures, tests/fixtures/real/SOURCES.md).

A gpu.* check may instead declare its canary with itself, as data (`@check(canary=
NvmlCanary(...))`, nodecheck.checks.registry): `declared` builds it on the same healthy node,
so a check on a new NVML field adds nothing here. A hand-written canary here wins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodecheck.checks.registry import Check, NvmlCanary
from nodecheck.core.results import Status
from nodecheck.selftest import kernlogs, nvml_data, trees


@dataclass(frozen=True)
class Setup:
    """What a case built: where the run's probes look, the options it pins, the job."""

    settings: Mapping[str, str] = field(default_factory=dict)  # nvml, sysfs_root, procfs_root
    options: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    # Applied between the case's `before` runs and the judged run (counters rising).
    between: Callable[[], None] | None = None


Builder = Callable[[Path, Mapping[str, Any]], Setup]  # (its directory, node's options)
Expect = Callable[[Mapping[str, Any]], Status]  # the status the bad input must get


def _fail(options: Mapping[str, Any]) -> Status:
    return Status.FAIL


def _by_severity(options: Mapping[str, Any]) -> Status:
    """gpu.persistence, gpu.mig, gpu.compute_mode: a site may make a mismatch a WARN."""
    return Status.WARN if options.get("severity") == "warn" else Status.FAIL


@dataclass(frozen=True)
class Case:
    name: str  # what the input is, e.g. "gpu3 row remap pending"
    good: bool
    build: Builder
    expect: Expect = _fail  # bad inputs only
    component: str | None = None  # bad inputs: the component the failure must name
    phase: str | None = None  # the judged run's phase; None: the check's first hook phase
    before: tuple[str, ...] = ()  # runs made first on the same data and state (baselines)


@dataclass(frozen=True)
class Canary:
    check: str
    cases: tuple[Case, ...]


# Checks that cannot have a canary on one node, and why (reported, never passed silently).
WAIVED = {
    "fabric.peers": "needs the job's other nodes answering on the fabric",
    "fabric.preflight": "needs the allocation's other nodes measuring with it over the fabric",
    **{
        f"trend.{name}": "judges hours to days of the node's own readings: no canary can "
        "make that history in a selftest (tests/unit/test_trend_*.py drive it through the store)"
        for name in ("gpu_ecc", "gpu_remap", "gpu_nvlink", "gpu_clocks", "gpu_xid", "ib_counters")
    },
}
DEEP_WHY = "deep tier: measures the hardware, no canary input"

JOB = {"SLURM_JOB_ID": "4242", "SLURM_JOB_UID": "2101171", "SLURM_JOB_USER": "canary"}


# --- GPU (NVML replay) ------------------------------------------------------------------


def _nvml(fault: str | None, **pinned: Any) -> Builder:
    def build(work: Path, node: Mapping[str, Any]) -> Setup:
        return Setup(settings={"nvml": nvml_data.write(work, fault)}, options=pinned, env=JOB)

    return build


def _gpu(
    check: str, fault_component: list[tuple[str, str, str]], expect: Expect = _fail, **pin: Any
) -> Canary:
    """A gpu.* canary: the healthy node, and one case per (fault, component, name)."""
    good = Case("healthy 8x H100 SXM", True, _nvml(None, **pin))
    bad = tuple(
        Case(name, False, _nvml(fault, **pin), expect, component)
        for fault, component, name in fault_component
    )
    return Canary(check, (good, *bad))


GPU = (
    _gpu(
        "gpu.count",
        [
            ("lost-gpu", "gpu3", "gpu3 lost (NVML_ERROR_GPU_IS_LOST)"),
            ("missing-gpu", "node", "7 of 8 GPUs visible"),
        ],
        expected=nvml_data.GPUS,
        pci_bus_ids=nvml_data.PCI_BUS_IDS,
    ),
    _gpu("gpu.model", [("swapped-model", "gpu5", "gpu5 an A100")], name=nvml_data.MODEL),
    _gpu(
        "gpu.driver",
        [("old-driver", "node", "driver 535.129.03 left behind")],
        driver_version=nvml_data.DRIVER,
        cuda_driver_version="12.7",
    ),
    _gpu("gpu.ecc", [("dbe", "gpu5", "gpu5 2 DBEs since reset")]),
    _gpu(
        "gpu.remap",
        [
            ("remap-pending", "gpu3", "gpu3 row remap pending"),
            ("remap-failure", "gpu6", "gpu6 row remap failure"),
            ("recovery-reboot", "gpu2", "gpu2 Node Reboot Required (Xid 154)"),
        ],
    ),
    _gpu("gpu.pcie", [("pcie-x8", "gpu2", "gpu2 PCIe x8")], expected_width=16, expected_gen=None),
    _gpu("gpu.nvlink", [("nvlink-down", "gpu4", "gpu4 NVLink 7 down")], expected_active=18),
    _gpu("gpu.clocks", [("hw-slowdown", "gpu1", "gpu1 HW slowdown at idle")]),
    _gpu("gpu.thermal", [("hot-idle", "gpu7", "gpu7 88 C at idle")]),
    _gpu(
        "gpu.power",
        [("hot-idle", "gpu7", "gpu7 412 W at idle")],
        expected_limit_w=nvml_data.POWER_LIMIT_W,
    ),
    _gpu(
        "gpu.persistence",
        [("persistence-off", "gpu0", "gpu0 persistence off")],
        _by_severity,
        expected=True,
    ),
    _gpu("gpu.mig", [("mig-on", "gpu1", "gpu1 MIG on")], _by_severity, expected=False),
    _gpu(
        "gpu.compute_mode",
        [("prohibited", "gpu6", "gpu6 compute mode Prohibited")],
        _by_severity,
        expected="default",
    ),
    _gpu("gpu.fabric", [("fabric-not-started", "gpu0", "fabric manager not running")]),
    # settle_s: the replayed process never leaves; waiting out a site's grace is only time.
    _gpu("gpu.idle", [("leftover-process", "gpu0", "gpu0 process left")], settle_s=0.2),
)


def _kernlog(text: str) -> Builder:
    def build(work: Path, node: Mapping[str, Any]) -> Setup:
        log = work / "kern.log"
        log.write_text(text)
        proc = trees.procfs_tree(work / "proc")
        return Setup(settings={"procfs_root": str(proc)}, options={"kmsg": str(log)}, env=JOB)

    return build


XID = Canary(
    "gpu.xid",
    (
        Case(
            "Xid 43, 31, 94: applications' faults (dmesg -T)", True, _kernlog(kernlogs.APP_FAULTS)
        ),
        Case("Xid 119 GSP timeout (/dev/kmsg records)", False, _kernlog(kernlogs.XID119_GSP)),
        Case("Xid 79 + 154 Node Reboot Required (journal)", False, _kernlog(kernlogs.XID79_154)),
    ),
)


# --- host (/proc trees, statvfs) ------------------------------------------------------


def _mem(total_kb: int) -> Builder:
    def build(work: Path, node: Mapping[str, Any]) -> Setup:
        proc = trees.procfs_tree(work / "proc", memory=trees.meminfo(total_kb))
        return Setup(settings={"procfs_root": str(proc)}, options={"min_total_gib": 2000})

    return build


LOST_DIMM_KB = trees.MEMTOTAL_KB - 64 * 1024**2  # one 64 GiB DIMM mapped out


def _disk(need_gib: float) -> Builder:
    """The selftest's own directory, against a need of nothing or of an exabyte."""

    def build(work: Path, node: Mapping[str, Any]) -> Setup:
        options: dict[str, Any] = {"min_free_gib": {str(work): need_gib}}
        if not need_gib:
            options["min_free_inodes_percent"] = 0  # the good input judges space, not /tmp
        return Setup(options=options)

    return build


# /proc/self/mounts of a GPU node (proc(5) format): root on NVMe, home over NFS.
MOUNTS = (
    "/dev/nvme0n1p2 / ext4 rw,relatime,errors=remount-ro 0 0\n"
    "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
    "tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0\n"
    "nfs01:/export/home /home nfs4 rw,relatime,vers=4.2 0 0\n"
)


def _mounts(required: list[str]) -> Builder:
    def build(work: Path, node: Mapping[str, Any]) -> Setup:
        proc = trees.procfs_tree(work / "proc", mounts=MOUNTS)
        options = {"required": required, "fstypes": {"/": "ext4"}, "read_write": ["/"]}
        return Setup(settings={"procfs_root": str(proc)}, options=options)

    return build


# A Slurm job's cgroup v2 path as slurmstepd makes it: tests/fixtures/real/cgroup/
# v2-job-step0-task0.txt (NordicHPC/sonar), with the canary's job id.
def _job_cgroup(job: str) -> str:
    return f"0::/system.slice/slurmstepd.scope/job_{job}/step_0/user/task_0\n"


def _procs(leftover: bool) -> Builder:
    def build(work: Path, node: Mapping[str, Any]) -> Setup:
        procs = [
            trees.Proc(4190001, "slurmd"),
            trees.Proc(4190002, "munged", uid=107),
            # another job's process, of another user: not this job's leftover
            trees.Proc(4190003, "python3", uid=2101172, cgroup=_job_cgroup("4241")),
        ]
        if leftover:
            procs.append(trees.Proc(4190004, "python3", uid=2101171, cgroup=_job_cgroup("4242")))
        proc = trees.procfs_tree(work / "proc", procs)
        sys_root = trees.sysfs_tree(work / "sys", slurm_cgroup=True)
        settings = {"procfs_root": str(proc), "sysfs_root": str(sys_root)}
        # grace_s: the canned process never exits; waiting for it is only time.
        return Setup(settings=settings, options={"grace_s": 0}, env=JOB)

    return build


SERVICES = ["munged", "slurmd", "nvidia-persistenced"]


def _services(all_running: bool) -> Builder:
    """The node's own `required` daemons (or SERVICES when it names none), all running or
    the first one gone."""

    def build(work: Path, node: Mapping[str, Any]) -> Setup:
        wanted = list(node.get("required") or SERVICES)
        running = wanted if all_running else wanted[1:]
        procs = [trees.Proc(4190100 + i, name) for i, name in enumerate(running)]
        proc = trees.procfs_tree(work / "proc", procs)
        return Setup(settings={"procfs_root": str(proc)}, options={"required": wanted})

    return build


def _first_service(options: Mapping[str, Any]) -> str:
    return str((options.get("required") or SERVICES)[0])


HOST = (
    Canary(
        "host.mem",
        (
            Case("2 TiB as expected", True, _mem(trees.MEMTOTAL_KB)),
            Case("a 64 GiB DIMM lost", False, _mem(LOST_DIMM_KB)),
        ),
    ),
    Canary(
        "host.disk",
        (
            Case("selftest dir, 0 GiB needed", True, _disk(0)),
            Case("selftest dir, 1 EiB needed", False, _disk(float(1024**3))),
        ),
    ),
    Canary(
        "host.mounts",
        (
            Case("/ mounted ext4 rw", True, _mounts(["/"])),
            Case("/lustre not mounted", False, _mounts(["/", "/lustre"]), component="/lustre"),
        ),
    ),
    Canary(
        "host.procs",
        (
            Case("only another job's process", True, _procs(False)),
            Case("a process left in the job's cgroup", False, _procs(True)),
        ),
    ),
    Canary(
        "host.services",
        (
            Case("required daemons running", True, _services(True)),
            Case("first required daemon gone", False, _services(False)),
        ),
    ),
)


# --- fabric (/sys trees) --------------------------------------------------------------

DEFAULT_PORTS = [f"mlx5_{i}/1" for i in range(8)]


def _port_names(node: Mapping[str, Any]) -> tuple[list[str], bool]:
    """The ports the node expects (ports, else `count` of them), and whether the canary
    must pin them: a node that names none expects none, and then a down port only WARNs."""
    if node.get("ports"):
        return list(node["ports"]), False
    if node.get("count"):
        return [f"mlx5_{i}/1" for i in range(int(node["count"]))], False
    return list(DEFAULT_PORTS), True


def _ports(names: list[str], node: Mapping[str, Any], down: str | None = None) -> list[trees.Port]:
    out = []
    for name in names:
        dev, _, port = name.partition("/")
        rate = node.get("rates", {}).get(name) or node.get("rate") or trees.NDR_4X
        layer = node.get("link_layer") or "InfiniBand"
        state, phys = (1, 3) if name == down else (4, 5)
        out.append(trees.Port(dev, int(port or 1), rate, layer, state, phys))
    return out


def _ib_port(good: bool) -> Builder:
    def build(work: Path, node: Mapping[str, Any]) -> Setup:
        names, pin = _port_names(node)
        root = trees.sysfs_tree(work / "sys", _ports(names, node, None if good else names[-1]))
        return Setup(settings={"sysfs_root": str(root)}, options={"ports": names} if pin else {})

    return build


def _last_port(options: Mapping[str, Any]) -> str:
    return _port_names(options)[0][-1]


# What a marginal cable does to a port during a job (each above ib.counters' default FAIL rise).
CABLE_RISES = {"symbol_error": 5000, "link_error_recovery": 40, "link_downed": 3}
CABLE_RISES |= {"port_rcv_errors": 4000}


# The hooks' own window: the prolog reads, the job runs, the epilog compares.
WINDOW: dict[str, Any] = {"phase": "epilog", "before": ("prolog",)}


def _counters(rising: bool) -> Builder:
    def build(work: Path, node: Mapping[str, Any]) -> Setup:
        names = list(node.get("ports") or DEFAULT_PORTS)
        root = trees.sysfs_tree(work / "sys", _ports(names, {}))
        proc = trees.procfs_tree(work / "proc")
        dev, _, port = names[-1].partition("/")

        def bump() -> None:
            trees.set_counters(root, dev, int(port or 1), CABLE_RISES)

        settings = {"sysfs_root": str(root), "procfs_root": str(proc)}
        return Setup(settings=settings, env=JOB, between=bump if rising else None)

    return build


def _counters_port(options: Mapping[str, Any]) -> str:
    return str(list(options.get("ports") or DEFAULT_PORTS)[-1])


DEFAULT_NETDEVS = ["ib0", "ib1"]


def _net(good: bool) -> Builder:
    def build(work: Path, node: Mapping[str, Any]) -> Setup:
        names = list(node.get("devices") or DEFAULT_NETDEVS)
        devs = []
        for name in names:
            speed = node.get("speeds", {}).get(name) or node.get("speed") or 400000
            down = not good and name == names[-1]
            state, carrier = ("down", 0) if down else ("up", 1)
            devs.append(trees.NetDev(name, state, carrier, speed, node.get("mtu") or 4092))
        root = trees.sysfs_tree(work / "sys", netdevs=devs)
        return Setup(settings={"sysfs_root": str(root)}, options={"devices": names})

    return build


FABRIC = (
    Canary(
        "ib.port",
        (
            Case("expected ports ACTIVE LinkUp", True, _ib_port(True)),
            Case("last port DOWN Disabled", False, _ib_port(False)),
        ),
    ),
    Canary(
        "ib.counters",
        (
            Case("no rise during the job", True, _counters(False), **WINDOW),
            Case("symbol errors, link downs during the job", False, _counters(True), **WINDOW),
        ),
    ),
    Canary(
        "net.link",
        (
            Case("netdevs up at speed", True, _net(True)),
            Case("last netdev down, no carrier", False, _net(False)),
        ),
    ),
)

# Components a bad input must name that depend on the node's options (resolved by the engine).
COMPONENT_OF: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "host.services": _first_service,
    "ib.port": _last_port,
    "ib.counters": _counters_port,
    "net.link": lambda options: str(list(options.get("devices") or DEFAULT_NETDEVS)[-1]),
}

CANARIES: dict[str, Canary] = {c.check: c for c in (*GPU, XID, *HOST, *FABRIC)}


# --- declared by the check itself (registry.NvmlCanary) --------------------------------


def _declared_nvml(decl: NvmlCanary, bad: bool) -> Builder:
    def build(work: Path, node: Mapping[str, Any]) -> Setup:
        snap = nvml_data.declared(decl, bad)
        nvml = nvml_data.write_snapshot(work, "declared-fault" if bad else "healthy", snap)
        return Setup(settings={"nvml": nvml}, options=dict(decl.pin), env=JOB)

    return build


def declared(chk: Check) -> Canary | None:
    """The canary a gpu.* check declares in its `@check(canary=...)`: the healthy node, and
    its fault, which it must FAIL on the component it names (WARN where the node sets the
    check's `severity` to "warn", as for the hand-written ones)."""
    decl = chk.canary
    if decl is None:
        return None
    expect = _by_severity if "severity" in chk.options else _fail
    good = Case("healthy 8x H100 SXM", True, _declared_nvml(decl, False))
    bad = Case(decl.says, False, _declared_nvml(decl, True), expect, decl.fails_on)
    return Canary(chk.id, (good, bad))


def canary_for(chk: Check) -> Canary | None:
    """The check's canary: a hand-written one above wins over one the check declares."""
    return CANARIES.get(chk.id) or declared(chk)


def all_canaries(registry: Mapping[str, Check]) -> dict[str, Canary]:
    """Every check's canary, hand-written or declared (checks without one left out)."""
    found = {cid: canary_for(chk) for cid, chk in registry.items()}
    return {cid: canary for cid, canary in found.items() if canary is not None}
