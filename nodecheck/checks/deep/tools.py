"""Deep checks that drive NVIDIA's own tools where a site installed them: `dcgmi diag` and
nccl-tests. Each runs the binary by absolute path with an argument list, under its own
timeout (the whole session killed at the deadline), and parses its real output format
(`nodecheck.probes.active.tools`). A tool that is not installed is a SKIP, not a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from nodecheck.checks.context import CheckContext
from nodecheck.checks.deep.common import GROUP
from nodecheck.checks.registry import Option, check
from nodecheck.core.progress import note
from nodecheck.core.results import CheckResult, Status

if TYPE_CHECKING:  # the probes are loaded in the probe child, where the checks run
    from nodecheck.probes.active.tools import ToolRun
    from nodecheck.probes.fabric.sysfs import IbPort, Rate

_STATUS = {"PASS": Status.PASS, "FAIL": Status.FAIL, "WARN": Status.WARN, "SKIP": Status.SKIP}


def _missing(check_id: str, binary: str) -> CheckResult | None:
    if os.access(binary, os.X_OK):
        return None
    return CheckResult(check_id, Status.SKIP, f"{binary} not installed")


@check(
    "deep.dcgm",
    tier="deep",
    group=GROUP,
    summary="NVIDIA DCGM diagnostics (`dcgmi diag -r N -j`), each test per GPU a result",
    phases=("manual",),
    timeout_s=2400.0,
    severity="high",
    remedy="admin",
    memory_limit_mb=0,
    options={
        "dcgmi": Option(str, "/usr/bin/dcgmi", "absolute path of dcgmi"),
        "level": Option(int, 1, "run level: 1 (~1 min, fits an epilog), 2, 3 or 4 (deep only)"),
        "run_timeout_s": Option((int, float), 2300, "dcgmi is killed after this"),
    },
)
def deep_dcgm(ctx: CheckContext) -> Iterator[CheckResult]:
    """Runs NVIDIA's Data Center GPU Manager diagnostics at the configured level and turns
    every test's verdict on every GPU into a result (`gpu3`; deployment tests covering all
    GPUs as `node`). Level 1 checks the software stack (about a minute), 2 adds PCIe and
    memory, 3 and 4 add stress, targeted power and EUD (tens of minutes). A failing test
    carries DCGM's own warning text, which says what to do (reset, reseat, RMA)."""
    from nodecheck.probes.active import tools

    binary, level = ctx.options["dcgmi"], int(ctx.options["level"])
    if (skip := _missing("deep.dcgm", binary)) is not None:
        yield skip
        return
    if level not in (1, 2, 3, 4):
        yield CheckResult("deep.dcgm", Status.ERROR, f"level must be 1-4, not {level}")
        return
    note(f"dcgmi diag -r {level}")
    ran = tools.run([binary, "diag", "-r", str(level), "-j"], ctx.options["run_timeout_s"])
    if ran.timed_out:
        msg = f"dcgmi diag -r {level} did not finish within {ctx.options['run_timeout_s']}s"
        yield CheckResult("deep.dcgm", Status.FAIL, msg, values={"hung": True})
        return
    try:
        found, meta = tools.parse_dcgm(ran.stdout)
    except ValueError as exc:
        tail = (ran.stderr or ran.stdout).strip().splitlines()[-1:] or [""]
        msg = f"dcgmi diag gave no result ({exc}; exit {ran.returncode}): {tail[0][:150]}"
        yield CheckResult("deep.dcgm", Status.ERROR, msg)
        return
    if meta.get("runtime_error"):
        yield CheckResult("deep.dcgm", Status.ERROR, f"dcgmi: {meta['runtime_error']}"[:300])
    for result in found:
        status = _STATUS[result.status]
        msg = f"{result.category}/{result.test}: {result.status.lower()}"
        if result.warnings:
            msg += f": {result.warnings[0]}"
        values = {"test": result.test, "level": level, "warnings": list(result.warnings)}
        yield CheckResult("deep.dcgm", status, msg[:300], result.component, values)


@check(
    "deep.nccl",
    tier="deep",
    group=GROUP,
    summary="nccl-tests all_reduce_perf on this node's GPUs: bus bandwidth and data errors",
    phases=("manual",),
    timeout_s=600.0,
    severity="high",
    remedy="admin",
    memory_limit_mb=0,
    options={
        "binary": Option(str, "/usr/local/bin/all_reduce_perf", "absolute path of *_perf"),
        "args": Option(
            list, ["-b", "8", "-e", "1G", "-f", "2", "-g", "8"], "its arguments", item=str
        ),
        "min_busbw_gbps": Option((int, float), 0, "FAIL below this average busbw (0: report)"),
        "run_timeout_s": Option((int, float), 540, "the tool is killed after this"),
    },
)
def deep_nccl(ctx: CheckContext) -> Iterator[CheckResult]:
    """Runs an nccl-tests binary (all_reduce_perf by default, all 8 GPUs of the node) and
    reports its average bus bandwidth. Wrong results (#wrong, out-of-bounds values) FAIL:
    NCCL moved data that arrived corrupted. A busbw below `min_busbw_gbps` (set it from a
    healthy node of the same class) FAILs: NVLink, NVSwitch or PCIe topology degraded."""
    from nodecheck.probes.active import tools

    binary = ctx.options["binary"]
    if (skip := _missing("deep.nccl", binary)) is not None:
        yield skip
        return
    note(f"{os.path.basename(binary)}")
    ran = tools.run([binary, *ctx.options["args"]], ctx.options["run_timeout_s"])
    if ran.timed_out:
        msg = f"{os.path.basename(binary)} did not finish within {ctx.options['run_timeout_s']}s"
        yield CheckResult("deep.nccl", Status.FAIL, msg, values={"hung": True})
        return
    result = tools.parse_nccl_tests(ran.stdout)
    if result.avg_busbw is None:
        tail = (ran.stderr or ran.stdout).strip().splitlines()[-1:] or [""]
        msg = f"no 'Avg bus bandwidth' in the output (exit {ran.returncode}): {tail[0][:150]}"
        yield CheckResult("deep.nccl", Status.ERROR, msg)
        return
    values = {"avg_busbw_gbps": result.avg_busbw, "wrong": result.wrong,
              "out_of_bounds": result.out_of_bounds, "sizes": len(result.rows),
              "ranks": result.ranks}  # fmt: skip
    floor = float(ctx.options["min_busbw_gbps"])
    if result.ranks == 1 or result.avg_busbw <= 0:
        # busbw = algbw * 2(n-1)/n (all-reduce) or (n-1)/n: 0 with one rank. A build without
        # MPI started by mpirun/srun runs one single-rank test per process, each "passing".
        why = ("ran with 1 rank: no link between GPUs was measured (bus bandwidth is 0 by "
               "definition; use -g <GPUs> or an MPI build launched with one rank per GPU)"
               if result.ranks == 1 else "measured no bus bandwidth (avg 0)")  # fmt: skip
        yield CheckResult("deep.nccl", Status.ERROR, f"nccl-tests {why}", values=values)
    elif result.wrong or result.out_of_bounds:
        msg = f"data errors: {result.wrong} wrong, {result.out_of_bounds} out of bounds"
        yield CheckResult("deep.nccl", Status.FAIL, msg, values=values)
    elif floor and result.avg_busbw < floor:
        msg = f"avg bus bandwidth {result.avg_busbw:g} GB/s below {floor:g}"
        yield CheckResult("deep.nccl", Status.FAIL, msg, values=values)
    else:
        msg = f"avg bus bandwidth {result.avg_busbw:g} GB/s, no data errors"
        yield CheckResult("deep.nccl", Status.PASS, msg, values=values)


@check(
    "deep.ibperf",
    tier="deep",
    group=GROUP,
    summary="perftest ib_write_bw / ib_write_lat through each HCA (loopback) vs its port rate",
    phases=("manual",),
    timeout_s=300.0,
    severity="medium",
    remedy="check-cable",
    memory_limit_mb=0,
    options={
        "bw_binary": Option(str, "/usr/bin/ib_write_bw", "absolute path of ib_write_bw"),
        "lat_binary": Option(str, "/usr/bin/ib_write_lat", "absolute path of ib_write_lat"),
        "devices": Option(list, [], "HCAs to test (empty: every HCA in sysfs)", item=str),
        "ib_port": Option(int, 1, "the HCA port to test"),
        "tcp_port": Option(int, 18515, "perftest's TCP port on loopback (latency: the next)"),
        "size": Option(int, 65536, "message size of the bandwidth run (bytes)"),
        "min_fraction": Option(float, 0.8, "FAIL below this share of the port's rate"),
        "min_gbps": Option((int, float), 0, "FAIL below this Gb/s instead (0: the port rate)"),
        "max_lat_us": Option((int, float), 0, "FAIL above this typical latency (0: report)"),
        "run_timeout_s": Option((int, float), 60, "each tool run is killed after this"),
    },
)
def deep_ibperf(ctx: CheckContext) -> Iterator[CheckResult]:
    """Runs perftest's ib_write_bw (and ib_write_lat, where installed) through each HCA
    port: server and client on this node, the traffic looped through the adapter, so that
    each HCA and its PCIe path are measured alone. The average Gb/s must reach
    `min_fraction` of the port's rate from sysfs (or `min_gbps`). A low figure with the
    port ACTIVE at full rate is a PCIe link trained down, an HCA on the wrong NUMA node, or
    a throttling adapter. Fix: compare `lspci -vv` LnkSta with LnkCap, check the HCA's
    firmware and temperature; between nodes, deep.fabric names the slow one."""
    from nodecheck.checks.deep import judge
    from nodecheck.probes.active import tools
    from nodecheck.probes.fabric import sysfs

    opts = ctx.options
    if (skip := _missing("deep.ibperf", opts["bw_binary"])) is not None:
        yield skip
        return
    hcas = list(opts["devices"]) or sysfs.list_ib_devices(ctx.settings.sysfs_root)
    if not hcas:
        yield CheckResult("deep.ibperf", Status.SKIP, "no RDMA device (sysfs class/infiniband)")
        return
    with_lat = os.access(opts["lat_binary"], os.X_OK)
    port = int(opts["ib_port"])
    results: list[CheckResult] = []
    for hca in hcas:
        component = f"{hca}/{port}"
        common = ["-d", hca, "-i", str(port), "-F"]
        note(f"ib_write_bw {component}")
        bw_args = [*common, "-p", str(opts["tcp_port"]), "-s", str(opts["size"]), "--report_gbits"]
        _, ran = tools.run_pair(
            [opts["bw_binary"], *bw_args],
            [opts["bw_binary"], *bw_args, "127.0.0.1"],
            float(opts["run_timeout_s"]),
        )
        port_state = sysfs.read_ib_port(ctx.settings.sysfs_root, hca, port)
        results.append(_judge_bw(ctx, port_state, component, ran))
        if with_lat:
            note(f"ib_write_lat {component}")
            lat_args = [*common, "-p", str(int(opts["tcp_port"]) + 1)]
            _, ran = tools.run_pair(
                [opts["lat_binary"], *lat_args],
                [opts["lat_binary"], *lat_args, "127.0.0.1"],
                float(opts["run_timeout_s"]),
            )
            results.append(_judge_lat(ctx, component, ran))
    yield from judge.merge_by_component("deep.ibperf", results)


def _tool_failed(component: str, what: str, ran: ToolRun) -> CheckResult:
    """A perftest run that gave no table: hung (FAIL, the adapter did not answer) or an
    error of the tool or its setup (ERROR, with its last line)."""
    values: dict[str, object] = {"metric": what}
    if ran.timed_out:
        values["hung"] = True
        return CheckResult("deep.ibperf", Status.FAIL, f"{what} did not finish in time",
                           component, values)  # fmt: skip
    tail = (ran.stderr or ran.stdout).strip().splitlines()[-1:] or [""]
    msg = f"{what} gave no result (exit {ran.returncode}): {tail[0][:150]}"
    return CheckResult("deep.ibperf", Status.ERROR, msg, component, values)


# Data per lane after line encoding, by the speed name sysfs shows. The kernel's rate
# (drivers/infiniband/core/sysfs.c, rate_show) is the signalling rate for SDR/DDR/QDR
# (2.5/5/10 Gb/s per lane, 8b/10b: 80% is data), about the data rate for FDR (14 per lane,
# 64b/66b of 14.0625) and the data rate itself from FDR10 on (10, 25, 50, 100, 200).
_LANE_DATA_GBPS = {"": 2.0, "SDR": 2.0, "DDR": 4.0, "QDR": 8.0, "FDR10": 10.0,
                   "FDR": 14.0625 * 64 / 66, "EDR": 25.0, "HDR": 50.0, "NDR": 100.0,
                   "XDR": 200.0}  # fmt: skip


def data_rate_gbps(rate: Rate, link_layer: str = "InfiniBand") -> float:
    """What the port carries in data (Gb/s), which is what perftest measures. RoCE ports
    print Ethernet speeds under IB names (40GbE shows as "4X QDR"): already data."""
    if link_layer != "InfiniBand" or rate.speed not in _LANE_DATA_GBPS:
        return rate.gbps
    return _LANE_DATA_GBPS[rate.speed] * rate.width


def _judge_bw(ctx: CheckContext, port: IbPort | None, component: str, ran: ToolRun) -> CheckResult:
    from nodecheck.probes.active import tools
    from nodecheck.probes.fabric.sysfs import Rate

    rows = tools.parse_perftest_bw(ran.stdout)
    if not rows:
        return _tool_failed(component, "ib_write_bw", ran)
    row = rows[-1]  # the largest message size: the one that shows the link's bandwidth
    rate = port.rate if port is not None and isinstance(port.rate, Rate) else None
    values: dict[str, object] = {"metric": "ib_write_bw", "unit": "Gb/s",
                                 "measured": row.average_gbps, "peak": row.peak_gbps,
                                 "bytes": row.nbytes}  # fmt: skip
    floor = float(ctx.options["min_gbps"])
    if floor > 0:
        basis = f"the configured {floor:g}"
    elif rate is not None:
        layer = port.link_layer if port is not None and isinstance(port.link_layer, str) else ""
        data = data_rate_gbps(rate, layer or "InfiniBand")
        floor = data * float(ctx.options["min_fraction"])
        basis = f"{ctx.options['min_fraction']:g} of the {data:g} Gb/s of data of {rate}"
        values.update(port_rate_gbps=rate.gbps, data_rate_gbps=round(data, 2))
    else:
        msg = f"ib_write_bw {row.average_gbps:g} Gb/s (port rate unknown: not judged)"
        return CheckResult("deep.ibperf", Status.PASS, msg, component, values)
    values["floor_gbps"] = floor
    if row.average_gbps < floor:
        msg = f"ib_write_bw {row.average_gbps:g} Gb/s below {floor:g} ({basis})"
        return CheckResult("deep.ibperf", Status.FAIL, msg, component, values)
    msg = f"ib_write_bw {row.average_gbps:g} Gb/s (at least {basis})"
    return CheckResult("deep.ibperf", Status.PASS, msg, component, values)


def _judge_lat(ctx: CheckContext, component: str, ran: ToolRun) -> CheckResult:
    from nodecheck.probes.active import tools

    rows = tools.parse_perftest_lat(ran.stdout)
    usec = rows[0].usec if rows else {}
    typical = usec.get("t_typical", usec.get("t_avg"))
    if typical is None:
        return _tool_failed(component, "ib_write_lat", ran)
    values = {"metric": "ib_write_lat", "unit": "us", "measured": typical, **usec}
    ceiling = float(ctx.options["max_lat_us"])
    if ceiling and typical > ceiling:
        msg = f"ib_write_lat {typical:g} us above {ceiling:g}"
        return CheckResult("deep.ibperf", Status.FAIL, msg, component, values)
    msg = f"ib_write_lat {typical:g} us"
    return CheckResult("deep.ibperf", Status.PASS, msg, component, values)
