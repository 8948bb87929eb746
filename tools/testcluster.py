#!/usr/bin/env python3
"""A throw-away Slurm cluster on loopback, for nodecheck's integration tests.

One munged, one slurmctld and N x `slurmd -D -N nX`, all running as root from a private
state directory (config, munge key and socket, spool, logs, pid files). Nodes are n1..nN,
all `NodeHostname=localhost NodeAddr=127.0.0.1`, each slurmd on its own port.

Standard library only: this file must also run unchanged inside a Debian sid chroot with a
newer Slurm and Python, so every path (Slurm binaries, munge binaries, state dir) is a
parameter.

CLI:
    python3 tools/testcluster.py up     --state-dir DIR --nodes N [--prolog P] [--epilog E] ...
    python3 tools/testcluster.py status --state-dir DIR
    python3 tools/testcluster.py down   --state-dir DIR
    python3 tools/testcluster.py env    --state-dir DIR      # `export SLURM_CONF=...` lines

API:
    cluster = TestCluster(state_dir=Path(".testcluster"), nodes=2, prolog=..., epilog=...)
    cluster.start()
    cluster.run(["sbatch", "-w", "n2", "--wrap", "true"])
    cluster.stop()

Processes are only ever stopped by the PIDs recorded when they were started (checked against
their start time and command line so a recycled PID is never hit), never by name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import testcluster_accounting

__all__ = [
    "ClusterError",
    "TestCluster",
    "add_loopback_address",
    "cgroup_fs_mounted",
    "loopback_needs_second_address",
    "slurm_version",
]

DEFAULT_PORT_BASE = 17000
PORT_SEARCH_END = 29000
STATE_FILE = "cluster.json"
# Set in every daemon's environment (and so in slurmstepd's): lets stop() find the job steps
# of *this* cluster that outlived their slurmd, without ever matching processes by name.
MARKER_ENV = "NODECHECK_TESTCLUSTER_ID"
IDLE_STATES = {"idle"}


class ClusterError(RuntimeError):
    """The cluster could not be started, queried or stopped. Message carries log tails."""


# ----------------------------------------------------------------------------- helpers


def slurm_version(sbin: str | os.PathLike[str] = "/usr/sbin") -> tuple[int, int, int]:
    """Version of the slurmctld in `sbin`, e.g. (22, 5, 8)."""
    out = subprocess.run(
        [str(Path(sbin) / "slurmctld"), "-V"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    ).stdout
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise ClusterError(f"cannot read Slurm version from `slurmctld -V`: {out!r}")
    major, minor, patch = (int(x) for x in match.groups())
    return major, minor, patch


def loopback_needs_second_address() -> bool:
    """True when Slurm's daemons would die with "Unable to resolve (null)".

    Slurm (IPv4 only unless EnableIPv6) resolves its listen address with
    getaddrinfo(NULL, port, AF_INET, AI_PASSIVE | AI_ADDRCONFIG). glibc's AI_ADDRCONFIG does not
    count 127.0.0.1 as "configured", so in a network namespace that has nothing but loopback
    the call fails. Any other IPv4 address (127.0.0.2 on lo is enough) fixes it.
    """
    try:
        socket.getaddrinfo(
            None,
            "17000",
            socket.AF_INET,
            socket.SOCK_STREAM,
            0,
            socket.AI_PASSIVE | socket.AI_ADDRCONFIG,
        )
    except socket.gaierror:
        return True
    return False


def cgroup_fs_mounted(mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Is any cgroup (v1 or v2) file system mounted under /sys/fs/cgroup?

    slurmd initialises its cgroup plugin even with proctrack/linuxproc and dies ("No
    filesystem mounted on /sys/fs/cgroup") where there is none, e.g. in a bare chroot or
    under `ip netns exec`.
    """
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return True  # cannot tell: assume the normal case
    for line in lines:
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        mounted_at = fields[4] if len(fields) > 4 else ""
        if mounted_at.startswith("/sys/fs/cgroup") and post.split()[:1] in (
            ["cgroup"],
            ["cgroup2"],
        ):
            return True
    return False


def add_loopback_address(address: str = "127.0.0.2", label: str = "lo:nc") -> None:
    """Add `address`/8 to lo as an alias, without iproute2 (a bare chroot has no `ip`).

    Same effect as `ip addr add 127.0.0.2/8 dev lo label lo:nc`, through the old
    SIOCSIFADDR/SIOCSIFNETMASK ioctls, which need nothing but the standard library.
    """
    import fcntl  # Unix only; imported here so the module still imports elsewhere

    siocsifaddr, siocsifnetmask = 0x8916, 0x891C
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1

    def ifreq(addr: str) -> bytes:
        sockaddr = struct.pack("=H2s4s8x", socket.AF_INET, b"\0\0", socket.inet_aton(addr))
        return struct.pack("16s16s8x", label.encode(), sockaddr)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        # A fresh network namespace has lo down: bring it up first.
        flags_req = fcntl.ioctl(sock.fileno(), siocgifflags, struct.pack("16s24x", b"lo"))
        flags = struct.unpack_from("16sH", flags_req)[1]
        if not flags & iff_up:
            fcntl.ioctl(sock.fileno(), siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))
        fcntl.ioctl(sock.fileno(), siocsifaddr, ifreq(address))
        fcntl.ioctl(sock.fileno(), siocsifnetmask, ifreq("255.0.0.0"))


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# What slurmctld and slurmd log when their port went to someone else.
PORT_TAKEN = "Address already in use"
PORT_ATTEMPTS = 4


def pick_port_base(
    state_dir: Path, count: int, start: int = DEFAULT_PORT_BASE, avoid: Iterable[int] = ()
) -> int:
    """A base port such that base..base+count-1 are all free on 127.0.0.1 (and not one of
    `avoid`, blocks that were free here but taken before the daemons bound them).

    The search starts at a block derived from the state dir's path, so two clusters with
    different state dirs started at the same moment are unlikely to race for the same ports;
    `TestCluster.start` retries on other blocks when they race anyway.
    """
    avoided = set(avoid)
    block = max(32, ((count + 31) // 32) * 32)
    nblocks = (PORT_SEARCH_END - start) // block
    first = zlib.crc32(str(state_dir.resolve()).encode()) % nblocks
    for i in range(nblocks):
        base = start + ((first + i) % nblocks) * block
        if base not in avoided and all(_port_free(p) for p in range(base, base + count)):
            return base
    raise ClusterError(f"no {count} free consecutive ports between {start} and {PORT_SEARCH_END}")


def _proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks after boot) of a live, non-zombie process, else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parens: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _proc_environ_has(pid: int, entry: bytes) -> bool:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return entry in raw.split(b"\0")


def _ancestors(pid: int) -> set[int]:
    seen = {pid}
    while pid > 1:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(raw[raw.rindex(")") + 2 :].split()[1])
        seen.add(pid)
    return seen


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"--- {path}: (missing)\n"
    body = "\n".join(text.splitlines()[-lines:])
    return f"--- {path} (last {lines} lines)\n{body}\n"


# ----------------------------------------------------------------------------- cluster


def missing_binaries(
    sbin: str | os.PathLike[str],
    bin: str | os.PathLike[str],
    munge_sbin: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The daemons and client commands a test cluster needs that are not executable here."""
    sbin, bin = Path(sbin), Path(bin)
    munge = Path(munge_sbin) if munge_sbin else sbin
    need = [sbin / "slurmctld", sbin / "slurmd", munge / "munged"]
    need += [bin / b for b in ("sinfo", "scontrol", "sbatch", "squeue", "scancel")]
    return [str(p) for p in need if not os.access(p, os.X_OK)]


class TestCluster:
    """A local Slurm cluster: munged + slurmctld + `nodes` slurmd, everything in state_dir."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        nodes: int = 2,
        *,
        prolog: str | os.PathLike[str] | None = None,
        epilog: str | os.PathLike[str] | None = None,
        health_program: str | os.PathLike[str] | None = None,
        health_interval: int = 0,
        extra_conf_lines: Iterable[str] = (),
        conf_overrides: Mapping[str, str] | None = None,
        nodecheck_config_text: str | None = None,
        cgroup_conf_text: str | None = None,
        sbin: str | os.PathLike[str] = "/usr/sbin",
        bin: str | os.PathLike[str] = "/usr/bin",
        munge_sbin: str | os.PathLike[str] | None = None,
        port_base: int | None = None,
        cpus_per_node: int = 1,
        real_memory_mb: int = 1000,
        partition: str = "debug",
        cluster_name: str = "nodecheck",
        fix_loopback: bool = True,
        reboot_program: bool = False,
        accounting: bool = False,
        start_timeout: float = 60.0,
        configured_nodes: int = 0,
    ) -> None:
        if not 1 <= nodes <= 512:
            raise ValueError(f"nodes must be 1..512, got {nodes}")
        self.state_dir = Path(state_dir).absolute()
        self.nodes = nodes
        self.node_names = [f"n{i}" for i in range(1, nodes + 1)]
        self.prolog = Path(prolog).absolute() if prolog else None
        self.epilog = Path(epilog).absolute() if epilog else None
        self.health_program = Path(health_program).absolute() if health_program else None
        self.health_interval = int(health_interval)
        self.extra_conf_lines = list(extra_conf_lines)
        self.conf_overrides = dict(conf_overrides or {})
        self.nodecheck_config_text = nodecheck_config_text
        self.cgroup_conf_text = cgroup_conf_text
        self.sbin = Path(sbin)
        self.bin = Path(bin)
        self.munge_sbin = Path(munge_sbin) if munge_sbin else self.sbin
        self.port_base = port_base
        self.cpus_per_node = cpus_per_node
        self.real_memory_mb = real_memory_mb
        self.partition = partition
        self.cluster_name = cluster_name
        self.fix_loopback = fix_loopback
        # RebootProgram: "reboot" a node by restarting its slurmd with -b (docs/testcluster.md).
        self.reboot_program = reboot_program
        # slurmdbd with a private MariaDB (tools/testcluster_accounting.py).
        self.accounting = accounting
        self.start_timeout = start_timeout
        # More nodes in slurm.conf than run a slurmd (n<nodes+1>..n<configured_nodes>): a
        # large cluster's controller on one machine (bench/scale.py). 0: just `nodes`.
        if configured_nodes and not nodes <= configured_nodes <= 100_000:
            raise ValueError(f"configured_nodes must be {nodes}..100000, got {configured_nodes}")
        self.configured_nodes = configured_nodes
        self.cluster_id = ""
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._pids: dict[str, dict[str, Any]] = {}

    # -- paths ------------------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.state_dir / "slurm.conf"

    @property
    def nodecheck_config(self) -> Path:
        """Where nodecheck looks for its config: next to $SLURM_CONF."""
        return self.state_dir / "nodecheck.toml"

    @property
    def health_wrapper(self) -> Path:
        return self.state_dir / "health-wrapper.sh"

    @property
    def munge_socket(self) -> Path:
        return self.state_dir / "munge" / "munge.socket"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    def slurmd_log(self, node: str) -> Path:
        return self.log_dir / f"slurmd.{node}.log"

    @property
    def slurmctld_log(self) -> Path:
        return self.log_dir / "slurmctld.log"

    @property
    def env(self) -> dict[str, str]:
        """Environment for running Slurm client commands against this cluster."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf_path)
        env["NODECHECK_CONFIG"] = str(self.nodecheck_config)
        path = env.get("PATH", "")
        env["PATH"] = os.pathsep.join([str(self.bin), str(self.sbin), path]).rstrip(os.pathsep)
        # Client commands must not pick up settings aimed at some other cluster.
        for key in ("SLURM_CLUSTERS", "SQUEUE_FORMAT", "SINFO_FORMAT", "SQUEUE_FORMAT2"):
            env.pop(key, None)
        return env

    # -- config -----------------------------------------------------------------------

    def _ports(self) -> tuple[int, list[int]]:
        assert self.port_base is not None
        return self.port_base, [self.port_base + i for i in range(1, self.nodes + 1)]

    def render_conf(self, version: tuple[int, int, int] = (22, 5, 0)) -> str:
        ctld_port, node_ports = self._ports()
        sd = self.state_dir
        conf: dict[str, str] = {
            "ClusterName": self.cluster_name,
            "SlurmctldHost": "localhost(127.0.0.1)",
            "SlurmctldPort": str(ctld_port),
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "StateSaveLocation": str(sd / "ctld"),
            "SlurmdSpoolDir": str(sd / "spool" / "%n"),
            "SlurmctldPidFile": str(self.run_dir / "slurmctld.pidfile"),
            "SlurmdPidFile": str(self.run_dir / "slurmd.%n.pidfile"),
            "SlurmctldLogFile": str(self.slurmctld_log),
            "SlurmdLogFile": str(self.log_dir / "slurmd.%n.log"),
            "SlurmctldDebug": "info",
            "SlurmdDebug": "info",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",
            "SchedulerType": "sched/backfill",
            # Defaults delay batch jobs ~3 s (batch_sched_delay) and leave pending jobs for the
            # 60 s main loop: tests want a job started within about a second.
            "SchedulerParameters": "batch_sched_delay=0,sched_interval=1",
            "MpiDefault": "none",
            "ReturnToService": "2",
            "PrologFlags": "Alloc",
            "PrologEpilogTimeout": "60",
            # Small timeouts: tests want a dead node noticed quickly. Pings go every
            # SlurmdTimeout/3, so a node resumed while marked not-responding is back fast.
            "SlurmdTimeout": "30",
            "SlurmctldTimeout": "30",
            "MessageTimeout": "10",
            "TCPTimeout": "5",
            "KillWait": "5",
            "InactiveLimit": "0",
            "MinJobAge": "300",
            "Waittime": "0",
            "MailProg": "/bin/true",
            # nodecheck's circuit breaker claims its slots as reservations of this license
            # (slurm.conf.example); conf_overrides={"Licenses": ""} leaves it out.
            "Licenses": "nodecheck_breaker:1000",
        }
        if version < (23, 2, 0):
            # From 23.02 the "none" plugin is gone; an unset AccountingStorageType means the same.
            conf["AccountingStorageType"] = "accounting_storage/none"
        if self.prolog:
            conf["Prolog"] = str(self.prolog)
        if self.epilog:
            conf["Epilog"] = str(self.epilog)
        if self.health_program:
            conf["HealthCheckProgram"] = str(self.health_wrapper)
            conf["HealthCheckInterval"] = str(self.health_interval)
            conf["HealthCheckNodeState"] = "ANY"
        if self.reboot_program:
            conf["RebootProgram"] = str(self.state_dir / "reboot-node")
        if self.accounting:
            conf.update(testcluster_accounting.slurm_conf_lines(self))
        conf.update(self.conf_overrides)
        lines = ["# Generated by tools/testcluster.py -- throw-away test cluster, do not edit."]
        lines += [f"{key}={value}" for key, value in conf.items() if value != ""]
        first, last = node_ports[0], node_ports[-1]
        names = f"n[1-{self.nodes}]" if self.nodes > 1 else "n1"
        ports = f"[{first}-{last}]" if self.nodes > 1 else str(first)
        lines.append(
            f"NodeName={names} NodeHostname=localhost NodeAddr=127.0.0.1 Port={ports} "
            f"CPUs={self.cpus_per_node} RealMemory={self.real_memory_mb} State=UNKNOWN"
        )
        if self.configured_nodes > self.nodes:
            # Never started: slurmctld's pings to port 1 are refused at once (nothing listens
            # on a privileged port here), and the nodes stay "not responding".
            lines.append(
                f"NodeName=n[{self.nodes + 1}-{self.configured_nodes}] NodeHostname=localhost "
                f"NodeAddr=127.0.0.1 Port=1 CPUs={self.cpus_per_node} "
                f"RealMemory={self.real_memory_mb} State=UNKNOWN"
            )
        lines.append(
            f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
        )
        lines += self.extra_conf_lines
        return "\n".join(lines) + "\n"

    def write_nodecheck_config(self, text: str) -> Path:
        """Write nodecheck.toml next to slurm.conf (root-owned, 0644)."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.nodecheck_config.with_suffix(".toml.tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(self.nodecheck_config)
        return self.nodecheck_config

    def _write_health_wrapper(self) -> None:
        # HealthCheckProgram runs with no environment but SLURMD_NODENAME: no SLURM_CONF and no
        # PATH. The wrapper supplies exactly what a site's config would: where slurm.conf and
        # nodecheck.toml are. PATH stays unset on purpose, as on a real node.
        assert self.health_program is not None
        text = (
            "#!/bin/sh\n"
            "# Generated by tools/testcluster.py: HealthCheckProgram gets no environment.\n"
            f"NODECHECK_CONFIG={shlex.quote(str(self.nodecheck_config))}\n"
            f"SLURM_CONF={shlex.quote(str(self.conf_path))}\n"
            "export NODECHECK_CONFIG SLURM_CONF\n"
            f'exec {shlex.quote(str(self.health_program))} "$@"\n'
        )
        self.health_wrapper.write_text(text)
        self.health_wrapper.chmod(0o755)

    def write_files(self, version: tuple[int, int, int] = (22, 5, 0)) -> None:
        """(Re)write slurm.conf, the health wrapper and nodecheck.toml (when given)."""
        self.conf_path.write_text(self.render_conf(version))
        self.conf_path.chmod(0o644)
        if self.health_program:
            self._write_health_wrapper()
        if self.reboot_program:
            self._write_reboot_program()
        cgroup_conf = self.state_dir / "cgroup.conf"
        text = self.cgroup_conf_text
        if text is None and version >= (23, 11, 0) and not cgroup_fs_mounted():
            # Newer slurmd can do without cgroups when told so; 22.05 knows no "disabled".
            text = "CgroupPlugin=disabled\n"
        if text is not None:
            cgroup_conf.write_text(text)
            cgroup_conf.chmod(0o644)
        if self.nodecheck_config_text is not None:
            self.write_nodecheck_config(self.nodecheck_config_text)

    def _write_reboot_program(self) -> None:
        """slurmd runs this as root with no arguments: the Python side finds the slurmd that
        called it, then detaches, since what it does next is stop that very slurmd."""
        script = self.state_dir / "reboot-node"
        script.write_text(
            "#!/bin/sh\n"
            "# Generated by tools/testcluster.py: the test cluster's RebootProgram.\n"
            f"exec {shlex.quote(sys.executable)} "
            f"{shlex.quote(str(Path(__file__).resolve()))} reboot-node "
            f'--state-dir {shlex.quote(str(self.state_dir))} --caller "$PPID" '
            f"</dev/null >>{shlex.quote(str(self.log_dir / 'reboot.log'))} 2>&1\n"
        )
        script.chmod(0o755)

    def node_of_slurmd(self, pid: int) -> str | None:
        """The node whose slurmd is `pid` or an ancestor of it (`slurmd ... -N NODE`)."""
        for candidate in _ancestors(pid):
            argv = _proc_cmdline(candidate)
            if argv and argv[0].endswith("slurmd") and "-N" in argv:
                return argv[argv.index("-N") + 1]
        return None

    def reboot_node(self, node: str) -> None:
        """Stop the node's slurmd by its recorded pid and start it again with -b, which
        makes it report a fresh boot to slurmctld, as a rebooted node does."""
        name = f"slurmd.{node}"
        time.sleep(1.0)  # let slurmd answer the reboot request before it goes
        self._signal_and_wait([name], 15.0)
        self._spawn(
            name, [str(self.sbin / "slurmd"), "-b", "-D", "-N", node, "-f", str(self.conf_path)]
        )

    # -- process bookkeeping -----------------------------------------------------------

    def _save_state(self) -> None:
        state = {
            "cluster_id": self.cluster_id,
            "nodes": self.nodes,
            "port_base": self.port_base,
            "sbin": str(self.sbin),
            "bin": str(self.bin),
            "munge_sbin": str(self.munge_sbin),
            "partition": self.partition,
            "configured_nodes": self.configured_nodes,
            "pids": self._pids,
        }
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_dir / STATE_FILE)

    @classmethod
    def attach(cls, state_dir: str | os.PathLike[str]) -> TestCluster:
        """A handle on a cluster started earlier (by another process) in state_dir."""
        path = Path(state_dir).absolute()
        try:
            state = json.loads((path / STATE_FILE).read_text())
        except FileNotFoundError:
            raise ClusterError(f"no test cluster recorded in {path}") from None
        cluster = cls(
            path,
            nodes=state["nodes"],
            sbin=state["sbin"],
            bin=state["bin"],
            munge_sbin=state.get("munge_sbin"),
            port_base=state["port_base"],
            partition=state.get("partition", "debug"),
            configured_nodes=state.get("configured_nodes", 0),
        )
        cluster.cluster_id = state.get("cluster_id", "")
        cluster._pids = state.get("pids", {})
        return cluster

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C",
            "SLURM_CONF": str(self.conf_path),
            MARKER_ENV: self.cluster_id,
        }
        out = open(self.log_dir / f"{name}.out", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=self.state_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # = setsid: own session, no terminal signals
            )
        finally:
            out.close()
        self._procs[name] = proc
        self._pids[name] = {
            "pid": proc.pid,
            "start_time": _proc_start_time(proc.pid),
            "argv": list(argv),
        }
        (self.run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        self._save_state()

    def _alive(self, name: str) -> bool:
        """Is the process we recorded as `name` still that very process, and running?"""
        rec = self._pids.get(name)
        if not rec:
            return False
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is not None:
            return False
        pid = int(rec["pid"])
        started = _proc_start_time(pid)
        if started is None:
            return False
        if rec.get("start_time") is not None and started != rec["start_time"]:
            return False  # PID recycled by something else
        cmdline = _proc_cmdline(pid)
        if not cmdline:
            # Empty for a moment around exec, and for good once a zombie: with the start
            # time already matching, only a zombie is dead.
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return False
            return (
                stat[stat.rindex(")") + 2 :].split()[0] != "Z" and rec.get("start_time") is not None
            )
        if str(self.state_dir) in " ".join(cmdline):
            return True
        # A daemon whose command line names no path of ours (slurmdbd) carries our marker.
        return _proc_environ_has(pid, f"{MARKER_ENV}={self.cluster_id}".encode())

    def pids(self) -> dict[str, int]:
        """Recorded daemons that are still alive: name -> PID."""
        return {name: int(rec["pid"]) for name, rec in self._pids.items() if self._alive(name)}

    # -- lifecycle ----------------------------------------------------------------------

    def _prepare_state_dir(self) -> None:
        if os.geteuid() != 0:
            raise ClusterError("the test cluster runs its daemons as root: run as root")
        if (self.state_dir / STATE_FILE).exists():
            old = TestCluster.attach(self.state_dir)
            if old.pids():
                raise ClusterError(
                    f"a test cluster is already running from {self.state_dir} "
                    f"(pids {sorted(old.pids().values())}); stop it first"
                )
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(self.state_dir, 0, 0)
        self.state_dir.chmod(0o700)
        # Fresh daemons state every time; keep nodecheck.toml if the caller put one there.
        for sub in ("ctld", "spool", "log", "run", "munge"):
            shutil.rmtree(self.state_dir / sub, ignore_errors=True)
        for sub in ("ctld", "log", "run", "munge"):
            (self.state_dir / sub).mkdir(mode=0o700)
        for node in self.node_names:
            (self.state_dir / "spool" / node).mkdir(mode=0o700, parents=True)

    def _check_binaries(self) -> None:
        missing = missing_binaries(self.sbin, self.bin, self.munge_sbin)
        if missing:
            raise ClusterError(f"missing Slurm/munge binaries: {', '.join(missing)}")
        for script in (self.prolog, self.epilog, self.health_program):
            if script is not None and not os.access(script, os.X_OK):
                raise ClusterError(f"{script} is not an executable file")

    def _ensure_loopback(self) -> None:
        if not loopback_needs_second_address():
            return
        if not self.fix_loopback:
            raise ClusterError(
                "getaddrinfo(AI_ADDRCONFIG) finds no IPv4 address besides 127.0.0.1 (network "
                "namespace?): Slurm would die with 'Unable to resolve (null)'. Add one, e.g. "
                "`ip addr add 127.0.0.2/8 dev lo`, or pass fix_loopback=True"
            )
        ip = shutil.which("ip", path="/usr/sbin:/usr/bin:/sbin:/bin")
        if ip:
            for argv in (
                [ip, "link", "set", "lo", "up"],
                [ip, "addr", "add", "127.0.0.2/8", "dev", "lo"],
            ):
                subprocess.run(argv, check=False, capture_output=True, timeout=30)
        else:
            with contextlib.suppress(OSError):
                add_loopback_address("127.0.0.2")
        if loopback_needs_second_address():
            raise ClusterError("added 127.0.0.2/8 to lo but getaddrinfo still fails")

    def _start_munged(self) -> None:
        key = self.state_dir / "munge" / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
        try:
            os.write(fd, os.urandom(1024))
        finally:
            os.close(fd)
        munge_dir = self.state_dir / "munge"
        self._spawn(
            "munged",
            [
                str(self.munge_sbin / "munged"),
                "--foreground",
                # The socket lives in the 0700 state dir; munged wants it reachable by all
                # users and refuses without --force. Only root talks to it here.
                "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--log-file={self.log_dir / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
                "--num-threads=4",
                # Without this munged resolves the host name, which a chroot may not know.
                "--origin=127.0.0.1",
            ],
        )
        self._wait(
            lambda: self.munge_socket.exists(),
            10,
            "munged did not create its socket",
            watch=["munged"],
        )

    def _start_slurmctld(self) -> None:
        self._spawn(
            "slurmctld",
            [str(self.sbin / "slurmctld"), "-D", "-c", "-i", "-f", str(self.conf_path)],
        )

    def _start_slurmd(self, node: str) -> None:
        self._spawn(
            f"slurmd.{node}",
            [str(self.sbin / "slurmd"), "-D", "-N", node, "-f", str(self.conf_path)],
        )

    def start(self) -> TestCluster:
        """Start everything and wait until every node is IDLE. Raises ClusterError with log
        tails on failure or timeout (after stopping whatever did start)."""
        self._check_binaries()
        if len(str(self.munge_socket).encode()) > 100:
            raise ClusterError(
                f"state dir path too long for a unix socket (sun_path is 108 bytes): "
                f"{self.munge_socket}"
            )
        self._prepare_state_dir()
        self._ensure_loopback()
        if self.port_base is not None:
            return self._start_on_ports()
        # A free port can be taken between our look and the daemons' bind (another cluster
        # starting at the same moment): then the daemon that lost says so, and we move on.
        tried: list[int] = []
        while True:
            extra = 2 if self.accounting else 0  # slurmdbd and MariaDB
            self.port_base = pick_port_base(self.state_dir, self.nodes + 1 + extra, avoid=tried)
            try:
                return self._start_on_ports()
            except ClusterError as exc:
                if PORT_TAKEN not in str(exc) or len(tried) >= PORT_ATTEMPTS - 1:
                    raise
                tried.append(self.port_base)
                print(
                    f"ports from {self.port_base} taken meanwhile, trying others", file=sys.stderr
                )

    def _start_on_ports(self) -> TestCluster:
        self.cluster_id = f"{uuid.uuid4().hex}:{self.state_dir}"
        self._pids = {}
        self._procs = {}
        version = slurm_version(self.sbin)
        self.write_files(version)
        self._save_state()
        try:
            self._start_munged()
            if self.accounting:
                testcluster_accounting.start(self)
            self._start_slurmctld()
            self._wait(self._ctld_responds, 20, "slurmctld did not answer", watch=["slurmctld"])
            for node in self.node_names:
                self._start_slurmd(node)
            self.wait_all_idle(self.start_timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        return self

    def _ctld_responds(self) -> bool:
        res = self.run(["scontrol", "ping"], check=False, timeout=15)
        return res.returncode == 0 and "UP" in res.stdout

    def wait_all_idle(self, timeout: float = 60.0) -> None:
        def all_idle() -> bool:
            states = {n: s for n, s in self.node_states().items() if n in self.node_names}
            return len(states) == self.nodes and all(s in IDLE_STATES for s in states.values())

        self._wait(
            all_idle,
            timeout,
            "not all nodes became IDLE",
            watch=list(self._pids),
        )

    def _wait(
        self,
        predicate: Callable[[], bool],
        timeout: float,
        what: str,
        watch: Sequence[str] = (),
    ) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if predicate():
                return
            dead = [name for name in watch if not self._alive(name)]
            if dead:
                raise ClusterError(f"{what}: {', '.join(dead)} exited\n{self.diagnostics()}")
            if time.monotonic() >= deadline:
                raise ClusterError(f"{what} within {timeout:.0f}s\n{self.diagnostics()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def diagnostics(self, lines: int = 25) -> str:
        parts = []
        if self._alive("slurmctld"):
            with contextlib.suppress(Exception):
                res = self.run(["sinfo", "-N", "-h", "-o", "%N|%T|%E"], check=False, timeout=10)
                parts.append(f"--- sinfo\n{res.stdout}{res.stderr}")
        # Each daemon's own log file, or its stdout/stderr when it died before opening one.
        pairs = [("munged.log", "munged.out"), ("slurmctld.log", "slurmctld.out")]
        for node in self.node_names:
            if node == self.node_names[0] or not self._alive(f"slurmd.{node}"):
                pairs.append((f"slurmd.{node}.log", f"slurmd.{node}.out"))
        for log, out in pairs:
            for path in (self.log_dir / log, self.log_dir / out):
                if path.exists() and path.stat().st_size:
                    parts.append(_tail(path, lines))
                    break
        return "".join(parts)

    def stop(self, timeout: float = 15.0) -> None:
        """Cancel jobs, stop the daemons by their recorded PIDs, reap stray job steps.

        Safe to call twice, after a failed start and from a process that did not start it.
        """
        if (self.state_dir / STATE_FILE).exists():
            # The file is the truth: a RebootProgram run may have replaced a slurmd since.
            with contextlib.suppress(Exception):
                other = TestCluster.attach(self.state_dir)
                for name, rec in other._pids.items():
                    if self._pids.get(name, {}).get("pid") != rec.get("pid"):
                        self._procs.pop(name, None)
                self._pids, self.cluster_id = other._pids, other.cluster_id
        if not self._pids:
            return
        if self._alive("slurmctld"):
            # Let Slurm end its jobs the normal way so no slurmstepd is left behind.
            with contextlib.suppress(Exception):
                res = self.run(
                    ["scancel", "--full", f"--partition={self.partition}"],
                    check=False,
                    timeout=10,
                )
                # A failing scancel (controller unreachable, e.g. from another network
                # namespace) means there is nothing to wait for.
                if res.returncode == 0:
                    self._wait(self._no_jobs_running, 10, "jobs did not end")
        # Nodes first, then controller, then accounting, then munge (each talks to the
        # ones after it while exiting).
        slurmds = [n for n in self._pids if n.startswith("slurmd.")]
        for group in (slurmds, ["slurmctld"], ["slurmdbd"], ["mariadbd"], ["munged"]):
            self._signal_and_wait([n for n in group if n in self._pids], timeout)
        self._reap_strays()
        self._pids = {}
        self._procs = {}
        with contextlib.suppress(OSError):
            self._save_state()

    def _no_jobs_running(self) -> bool:
        res = self.run(["squeue", "-h", "-o", "%i", "-t", "PD,R,CG,S,CF"], check=False)
        return res.returncode != 0 or not res.stdout.strip()

    def _signal_and_wait(self, names: list[str], timeout: float) -> None:
        live = [n for n in names if self._alive(n)]
        for name in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(self._pids[name]["pid"]), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while live and time.monotonic() < deadline:
            live = [n for n in live if self._alive(n)]
            if live:
                time.sleep(0.05)
        for name in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(self._pids[name]["pid"]), signal.SIGKILL)
        for name in names:
            proc = self._procs.get(name)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)

    def _reap_strays(self) -> None:
        """SIGKILL what is left of this cluster's job steps (slurmstepd and anything else that
        inherited the daemons' unique marker), never touching ourselves or our ancestors."""
        if not self.cluster_id:
            return
        entry = f"{MARKER_ENV}={self.cluster_id}".encode()
        spare = _ancestors(os.getpid())
        for _ in range(3):
            found = []
            for d in Path("/proc").iterdir():
                pid = int(d.name) if d.name.isdigit() else 0
                if pid and pid not in spare and _proc_environ_has(pid, entry):
                    found.append(pid)
            if not found:
                return
            for pid in found:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    def __enter__(self) -> TestCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- talking to it --------------------------------------------------------------------

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (argument list; a bare name is looked up in `bin`).

        Runs in `cwd`, by default the state dir, so a job submitted without `-o` writes its
        slurm-<id>.out there rather than into the caller's working directory."""
        argv = list(args)
        if not argv:
            raise ValueError("empty command")
        if "/" not in argv[0]:
            for d in (self.bin, self.sbin):
                if (d / argv[0]).exists():
                    argv[0] = str(d / argv[0])
                    break
        res = subprocess.run(
            argv,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
            cwd=self.state_dir if cwd is None else cwd,
        )
        if check and res.returncode != 0:
            raise ClusterError(
                f"{shlex.join(argv)} exited {res.returncode}\n"
                f"stdout: {res.stdout}\nstderr: {res.stderr}"
            )
        return res

    def scontrol(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["scontrol", *args], check=check)

    def sbatch(self, *args: str) -> int:
        """Submit a batch job (`--parsable` added); returns the job id."""
        res = self.run(["sbatch", "--parsable", *args])
        return int(res.stdout.strip().split(";")[0])

    def node_states(self) -> dict[str, str]:
        """node -> state as sinfo's %T prints it (e.g. idle, drained, down*)."""
        res = self.run(["sinfo", "-N", "-h", "-o", "%N|%T"], check=False, timeout=15)
        if res.returncode != 0:
            return {}
        states: dict[str, str] = {}
        for line in res.stdout.splitlines():
            name, _, state = line.partition("|")
            states.setdefault(name.strip(), state.strip())
        return states

    def node_state(self, name: str) -> tuple[str, str]:
        """(state, reason) of one node, e.g. ("drained", "nodecheck: gpu.ecc gpu3: ...").

        State is sinfo's %T in lower case (idle, allocated, drained, draining, down*, idle*...);
        reason is "" when the node has none.
        """
        res = self.run(["sinfo", "-N", "-h", "-n", name, "-o", "%N|%T|%E"], timeout=15)
        for line in res.stdout.splitlines():
            node, _, rest = line.partition("|")
            if node.strip() == name:
                state, _, reason = rest.partition("|")
                reason = reason.rstrip("\n")
                return state.strip(), "" if reason == "none" else reason
        raise ClusterError(f"node {name} not known to sinfo: {res.stdout!r} {res.stderr!r}")

    def job_state(self, job_id: int | str) -> str:
        """JobState from `scontrol show job` (PENDING, RUNNING, COMPLETED, FAILED...)."""
        res = self.scontrol("show", "job", str(job_id), check=False)
        match = re.search(r"\bJobState=(\S+)", res.stdout)
        return match.group(1) if match else ""

    def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float = 30.0,
        interval: float = 0.2,
        message: str = "condition",
    ) -> Any:
        """Poll `predicate` until it returns something truthy; return that. Raise
        TimeoutError (with the cluster's state) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"timed out after {timeout:.0f}s waiting for {message}\n"
                    + self.diagnostics(lines=10)
                )
            time.sleep(interval)

    def drain(self, node: str, reason: str) -> None:
        self.scontrol("update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}")

    def resume(self, node: str, reconfigure: bool = True) -> None:
        """RESUME a node; with `reconfigure` also `scontrol reconfigure` so it does not sit in
        idle* (not responding) until the next ping."""
        self.scontrol("update", f"NodeName={node}", "State=RESUME")
        if reconfigure:
            self.reconfigure()

    def reconfigure(self) -> None:
        self.scontrol("reconfigure")

    def reset(self, timeout: float = 30.0) -> None:
        """Back to a clean slate between tests: cancel every job, resume every node that is
        drained or down (whoever drained it), give back nodecheck's circuit-breaker slots
        (reservations nodecheck_breaker_*, which would otherwise count one test's drains
        against the next for their window), reconfigure and wait until all nodes are IDLE."""
        self.run(["scancel", "--full", f"--partition={self.partition}"], check=False)
        self._wait(self._no_jobs_running, timeout, "jobs did not end")
        shown = self.scontrol("show", "-o", "reservation", check=False).stdout
        for found in re.finditer(r"^ReservationName=(nodecheck_breaker_\S+)", shown, re.M):
            self.scontrol("delete", "reservation", found[1], check=False)
        states = self.node_states()
        busy = [n for n, s in states.items() if s not in IDLE_STATES]
        for node in busy:
            self.scontrol("update", f"NodeName={node}", "State=RESUME", check=False)
        if busy:
            self.reconfigure()
        self.wait_all_idle(timeout)

    def status(self) -> dict[str, Any]:
        return {
            "state_dir": str(self.state_dir),
            "slurm_conf": str(self.conf_path),
            "port_base": self.port_base,
            "daemons": self.pids(),
            "nodes": self.node_states() if self._alive("slurmctld") else {},
        }


# ----------------------------------------------------------------------------- CLI


def _cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("up", "down", "status", "env", "reboot-node"):
        p = sub.add_parser(name)
        p.add_argument("--state-dir", required=True, type=Path)
        if name == "reboot-node":
            p.add_argument("--caller", type=int, required=True, help="pid of the calling slurmd")
        if name == "up":
            p.add_argument("--nodes", type=int, default=2)
            p.add_argument(
                "--configured-nodes",
                type=int,
                default=0,
                help="nodes in slurm.conf, of which only --nodes run a slurmd (bench/scale.py)",
            )
            p.add_argument("--prolog")
            p.add_argument("--epilog")
            p.add_argument("--health-program")
            p.add_argument("--health-interval", type=int, default=0)
            p.add_argument("--port-base", type=int)
            p.add_argument("--sbin", default="/usr/sbin")
            p.add_argument("--bin", default="/usr/bin")
            p.add_argument("--munge-sbin")
            p.add_argument("--cpus-per-node", type=int, default=1)
            p.add_argument("--timeout", type=float, default=60.0)
            p.add_argument(
                "--nodecheck-config", type=Path, help="copy this file to STATE_DIR/nodecheck.toml"
            )
            p.add_argument(
                "--reboot-program",
                action="store_true",
                help="RebootProgram= a script that restarts the node's slurmd (`slurmd -b`)",
            )
            p.add_argument(
                "--accounting",
                action="store_true",
                help="slurmdbd with a private MariaDB (tools/testcluster_accounting.py)",
            )
            p.add_argument(
                "--cgroup-conf-line",
                action="append",
                help="line for STATE_DIR/cgroup.conf (repeatable)",
            )
            p.add_argument(
                "--conf-line",
                action="append",
                default=[],
                help="extra slurm.conf line (repeatable)",
            )
    args = parser.parse_args(argv)

    if args.cmd == "up":
        if args.health_program and not args.nodecheck_config:
            # HealthCheckProgram gets no environment: the wrapper points nodecheck at
            # STATE_DIR/nodecheck.toml, which only --nodecheck-config writes. Without it
            # every health run would end at "no config" and change nothing, silently.
            print(
                "testcluster: --health-program needs --nodecheck-config (the health "
                "wrapper runs nodecheck with STATE_DIR/nodecheck.toml)",
                file=sys.stderr,
            )
            return 2
        cluster = TestCluster(
            args.state_dir,
            nodes=args.nodes,
            prolog=args.prolog,
            epilog=args.epilog,
            health_program=args.health_program,
            health_interval=args.health_interval,
            extra_conf_lines=args.conf_line,
            cgroup_conf_text=(
                "\n".join(args.cgroup_conf_line) + "\n" if args.cgroup_conf_line else None
            ),
            nodecheck_config_text=(
                args.nodecheck_config.read_text() if args.nodecheck_config else None
            ),
            sbin=args.sbin,
            bin=args.bin,
            munge_sbin=args.munge_sbin,
            port_base=args.port_base,
            cpus_per_node=args.cpus_per_node,
            reboot_program=args.reboot_program,
            accounting=args.accounting,
            start_timeout=args.timeout,
            configured_nodes=args.configured_nodes,
        )
        t0 = time.monotonic()
        try:
            cluster.start()
        except ClusterError as exc:
            print(f"testcluster: {exc}", file=sys.stderr)
            return 1
        print(
            f"testcluster: {args.nodes} node(s) idle in {time.monotonic() - t0:.1f}s; "
            f"export SLURM_CONF={cluster.conf_path}"
        )
        return 0

    if args.cmd == "down":
        if not (args.state_dir / STATE_FILE).exists():
            print(f"testcluster: nothing recorded in {args.state_dir}")
            return 0
        t0 = time.monotonic()
        TestCluster.attach(args.state_dir).stop()
        print(f"testcluster: stopped in {time.monotonic() - t0:.1f}s")
        return 0

    try:
        cluster = TestCluster.attach(args.state_dir)
    except ClusterError as exc:
        print(f"testcluster: {exc}", file=sys.stderr)
        return 1
    if args.cmd == "reboot-node":
        node = cluster.node_of_slurmd(args.caller)
        if node is None:
            print(f"testcluster: pid {args.caller} is no slurmd of this cluster", file=sys.stderr)
            return 1
        if os.fork():  # slurmd waits for its RebootProgram: answer at once, restart detached
            return 0
        os.setsid()
        cluster.reboot_node(node)
        print(f"testcluster: {node} rebooted (slurmd restarted with -b)", flush=True)
        os._exit(0)
    if args.cmd == "env":
        print(f"export SLURM_CONF={shlex.quote(str(cluster.conf_path))}")
        print(f"export NODECHECK_CONFIG={shlex.quote(str(cluster.nodecheck_config))}")
        return 0
    info = cluster.status()
    print(json.dumps(info, indent=2))
    return 0 if info["daemons"].get("slurmctld") else 3


if __name__ == "__main__":
    sys.exit(_cli())
