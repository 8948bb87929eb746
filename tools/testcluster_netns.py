#!/usr/bin/env python3
"""A test cluster whose slurmd each run in a network namespace of their own ("hosts").

tools/testcluster.py runs every daemon on loopback; this subclass keeps munged and slurmctld
in the root namespace and starts each `slurmd -N nX` inside a namespace the caller built
(tests/netns/lab.py: host namespaces wired to a "fabric" and a "control" bridge), with

- `NodeAddr=` the host's control address, one NodeName line per node;
- `SlurmctldHost=localhost(<ctld_addr>)`: an address of the root namespace that the hosts
  reach (the caller's veth from the root namespace into the control bridge); slurmctld
  listens on every address, so client commands from the root namespace work as before;
- slurmd started through `nsenter --net=/run/netns/<ns>` (not `ip netns exec`, which remounts
  /sys and hides /sys/fs/cgroup: slurmd dies). nsenter execs slurmd, so the recorded PID is
  the daemon's own and stopping works as for every other test cluster.

munged's socket is a path in the state dir, which every namespace shares (the filesystem is
not namespaced). The Prolog, and everything nodecheck runs from it, runs in the node's own
namespace: a fabric probe there binds the host's fabric address.

PrologFlags and everything else: TestCluster's keyword arguments (conf_overrides).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from testcluster import TestCluster

NSENTER = shutil.which("nsenter", path="/usr/bin:/bin:/usr/sbin:/sbin") or "/usr/bin/nsenter"


class NetnsCluster(TestCluster):
    """TestCluster with node i's slurmd in namespace `hosts[f"n{i}"][0]`, NodeAddr
    `hosts[...][1]`, and slurmctld announced at `ctld_addr`."""

    __test__ = False

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        hosts: Mapping[str, tuple[str, str]],
        ctld_addr: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(state_dir, nodes=len(hosts), **kwargs)
        missing = set(self.node_names) - set(hosts)
        if missing:
            raise ValueError(f"no namespace host for {sorted(missing)}")
        self.hosts = dict(hosts)
        self.ctld_addr = ctld_addr

    def render_conf(self, version: tuple[int, int, int] = (22, 5, 0)) -> str:
        text = super().render_conf(version)
        text = re.sub(
            r"^SlurmctldHost=.*$", f"SlurmctldHost=localhost({self.ctld_addr})", text, flags=re.M
        )
        match = re.search(r"^NodeName=\S+ NodeHostname=localhost NodeAddr=\S+ (.*)$", text, re.M)
        if match is None:
            raise ValueError("testcluster's NodeName line changed: update testcluster_netns")
        rest = re.sub(r"Port=\S+ ", "", match.group(1))
        _, ports = self._ports()
        lines = [
            f"NodeName={node} NodeHostname=localhost NodeAddr={self.hosts[node][1]} "
            f"Port={port} {rest}"
            for node, port in zip(self.node_names, ports, strict=True)
        ]
        return text.replace(match.group(0), "\n".join(lines))

    def _start_slurmd(self, node: str) -> None:
        netns = Path("/run/netns") / self.hosts[node][0]
        self._spawn(
            f"slurmd.{node}",
            [NSENTER, f"--net={netns}", str(self.sbin / "slurmd"), "-D", "-N", node,
             "-f", str(self.conf_path)],
        )  # fmt: skip
