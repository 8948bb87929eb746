"""Deep checks that drive NVIDIA's own tools where a site installed them: `dcgmi diag` and
nccl-tests. Each runs the binary by absolute path with an argument list, under its own
timeout (the whole session killed at the deadline), and parses its real output format
(`nodecheck.probes.active.tools`). A tool that is not installed is a SKIP, not a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from nodecheck.checks.context import CheckContext
from nodecheck.checks.deep.gpu import GROUP
from nodecheck.checks.registry import Option, check
from nodecheck.run.progress import note
from nodecheck.run.results import CheckResult, Status

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
              "out_of_bounds": result.out_of_bounds, "sizes": len(result.rows)}  # fmt: skip
    floor = float(ctx.options["min_busbw_gbps"])
    if result.wrong or result.out_of_bounds:
        msg = f"data errors: {result.wrong} wrong, {result.out_of_bounds} out of bounds"
        yield CheckResult("deep.nccl", Status.FAIL, msg, values=values)
    elif floor and result.avg_busbw < floor:
        msg = f"avg bus bandwidth {result.avg_busbw:g} GB/s below {floor:g}"
        yield CheckResult("deep.nccl", Status.FAIL, msg, values=values)
    else:
        msg = f"avg bus bandwidth {result.avg_busbw:g} GB/s, no data errors"
        yield CheckResult("deep.nccl", Status.PASS, msg, values=values)
