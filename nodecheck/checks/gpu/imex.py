"""gpu.fabric's IMEX part: on a node of a multi-node NVLink domain (GB200/GB300 NVL72), the
IMEX daemon and the channels CUDA's fabric memory needs (probes/imex.py).

Not a check of its own: gpu.fabric judges the node's NVLink domain, and IMEX is what makes
that domain usable across nodes. Every FAIL here rests on the signal "imex", new to these
platforms: report-only until the site enables it (run/report_only.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Option
from nodecheck.core.results import SIGNALS_KEY, CheckResult, Status

if TYPE_CHECKING:
    from nodecheck.probes.imex import ImexView
    from nodecheck.probes.nvml.model import Snapshot

COMPONENT = "imex"
SIGNAL = {"imex": "GB200/GB300: the IMEX daemon and channels of a multi-node NVLink domain"}
OPTIONS = {
    "imex": Option(
        str,
        "auto",
        "'auto': judge IMEX where the GPUs registered in a multi-node NVLink domain (a "
        "cluster UUID); 'on': always; 'off': never",
        choices=("auto", "on", "off"),
    ),
    "imex_daemon": Option(str, "nvidia-imex", "the IMEX daemon's process name (runs as root)"),
    "imex_channels": Option(list, [0], "IMEX channels that must exist", item=int, low=0),
    "imex_channels_dir": Option(
        str, "/dev/nvidia-caps-imex-channels", "where the channel device nodes are"
    ),
}


def wanted(ctx: CheckContext, snap: Snapshot) -> bool:
    mode = ctx.options["imex"]
    if mode != "auto":
        return mode == "on"
    return any(g.fabric is not None and g.fabric.clusterUuid for g in snap.gpus)


def judge(ctx: CheckContext) -> Iterator[CheckResult]:
    from nodecheck.checks.host.services import judge_service
    from nodecheck.probes import host, imex

    opts = ctx.options
    devices = ctx.proc_path("devices")
    try:
        view = imex.read(devices, Path(opts["imex_channels_dir"]), opts["imex_channels"])
    except OSError as exc:
        msg = f"cannot read {devices}: {exc.strerror or exc}"
        yield CheckResult("gpu.fabric", Status.FAIL, msg, COMPONENT, {SIGNALS_KEY: ["imex"]})
        return
    name = opts["imex_daemon"]
    procs = host.processes(ctx.proc_path(), with_cgroup=False).values()
    status, said = judge_service(name, "root", 0, procs)
    daemon = None if status is Status.PASS else f"{name} {said}"
    yield assess(view, daemon, name, opts["imex_channels_dir"])


def assess(view: ImexView, daemon_problem: str | None, daemon: str, where: str) -> CheckResult:
    """The IMEX verdict, pure: the channel device, each channel node, the daemon."""
    from nodecheck.probes.imex import CHANNEL_DEVICE

    problems = [daemon_problem] if daemon_problem else []
    if view.major is None:
        problems.append(
            f"the driver registered no {CHANNEL_DEVICE} device (/proc/devices): "
            "no IMEX channel can work"
        )
    for channel in view.channels:
        node = f"{where}/channel{channel.minor}"
        if channel.problem:
            problems.append(
                f"IMEX channel {node} {channel.problem} (channels do not persist through a "
                "reboot: recreate it)"
            )
        elif view.major is not None and channel.device != (view.major, channel.minor):
            major, minor = channel.device or (None, None)
            problems.append(
                f"IMEX channel {node} is char {major}:{minor}, not {view.major}:{channel.minor}"
            )
    values: dict[str, object] = {"major": view.major, "channels": [c.minor for c in view.channels]}
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return CheckResult(
            "gpu.fabric",
            Status.FAIL,
            problems[0] + more,
            COMPONENT,
            {**values, "problems": problems, SIGNALS_KEY: ["imex"]},
            severity="high",
            remedy="restart-service",
        )
    channels = ",".join(str(c.minor) for c in view.channels) or "none asked"
    msg = f"{daemon} running; IMEX channel(s) {channels} present"
    return CheckResult("gpu.fabric", Status.PASS, msg, COMPONENT, values)
