"""External measurement tools where a site has them: perftest, nccl-tests, `dcgmi diag`.

`run` starts a tool from an absolute path with an argument list (never a shell) in its own
session and kills the whole session at the deadline. The parsers read the tools' real
output formats (fixtures in tests/fixtures/real/deep/ name where each came from):

- perftest `ib_write_bw` / `ib_*_bw`: a table under
  ` #bytes     #iterations    BW peak[Gb/sec]    BW average[Gb/sec]   MsgRate[Mpps]`
  (`[MB/sec]` without --report_gbits; perftest 1.x printed no MsgRate column);
- perftest `ib_write_lat` / `ib_*_lat`: ` #bytes #iterations    t_min[usec] ... 99.9%
  percentile[usec]`, rows possibly interleaved with warnings ("Conflicting CPU frequency");
- nccl-tests `*_perf`: rows of size/count/type/redop/root then out-of-place and in-place
  time/algbw/busbw/#wrong, then `# Out of bounds values : N OK|FAILED` and
  `# Avg bus bandwidth    : X`; numbers as `%g` prints them (`1.04858e+06` wrong elements),
  lines possibly prefixed by `mpirun --tag-output` (`[1,0]<stdout>:`) or `srun --label`
  (` 0: `);
- `dcgmi diag -r N -j`: DCGM 3.x JSON ("DCGM GPU Diagnostic", results keyed "gpu_ids" or
  "gpu_id") and DCGM 4.x JSON ("DCGM Diagnostic", results keyed "entity_group" and
  "entity_id"), possibly after a line of text; `null` entries in test lists are skipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nodecheck.core import bounded

# nccl-tests prints with %g and %e past their column widths: "1.04858e+06", "2.1e+08".
_NUMBER = r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
# What launchers put before every line of a rank's output: `mpirun --tag-output`
# ("[1,0]<stdout>:") and `srun --label` (" 0: ").
_LAUNCHER_TAG = re.compile(r"^(?:\[\d+,\d+\]<std(?:out|err)>:|\s*\d+: )")


def untagged(line: str) -> str:
    """The line as the tool printed it, without a launcher's per-rank prefix."""
    return _LAUNCHER_TAG.sub("", line, count=1)


@dataclass(frozen=True)
class ToolRun:
    """How one tool run ended: exit code (None when killed at the deadline) and output."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


# A killed tool's last output is still in its pipes until every process of its session has
# gone; a GPU tool may take seconds to release its devices. Past this it is left behind.
_KILLED_GRACE_S = 5.0


def _start(argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    if not os.path.isabs(argv[0]):
        raise ValueError(f"tool path must be absolute, not {argv[0]!r}")
    # Its own session: its children (dcgmi's nvvs, mpirun's ranks) die with it.
    return bounded.start(argv, env, own_session=True, errors="replace")


def _finish(proc: subprocess.Popen[str], timeout_s: float) -> ToolRun:
    """Its output once it exits; at the deadline its whole session is killed first."""
    argv = tuple(str(arg) for arg in proc.args)  # _start passes a list
    ran = bounded.collect(proc, max(0.1, timeout_s), kill_session=True, grace_s=_KILLED_GRACE_S)
    return ToolRun(argv, ran.returncode, ran.stdout, ran.stderr)


def run(argv: Sequence[str], timeout_s: float, env: dict[str, str] | None = None) -> ToolRun:
    """Run argv[0] (an absolute path) with its arguments; the session dies at the deadline."""
    return _finish(_start(argv, env), timeout_s)


def run_pair(
    server: Sequence[str], client: Sequence[str], timeout_s: float, tries: int = 5
) -> tuple[ToolRun, ToolRun]:
    """perftest's two halves: start `server`, run `client` against it, collect both.

    The server needs a moment to listen: a client that cannot connect yet is started again
    (up to `tries` times) while the server is alive. Both run in their own sessions, and
    whatever still runs at the deadline is killed with its children."""
    if not os.path.isabs(client[0]):
        raise ValueError(f"tool path must be absolute, not {client[0]!r}")
    deadline = time.monotonic() + timeout_s
    proc = _start(server)
    try:
        for attempt in range(tries):
            time.sleep(0.2 * (attempt + 1))  # the server's listen socket, not yet there
            ran = run(client, deadline - time.monotonic())
            refused = ran.returncode not in (0, None) and "connect" in (ran.stdout + ran.stderr)
            if not refused or proc.poll() is not None or time.monotonic() >= deadline:
                break
        # A server whose client finished exits by itself within moments; one still waiting
        # (its client never came) is killed.
        return _finish(proc, min(5.0, deadline - time.monotonic())), ran
    finally:
        if proc.poll() is None:  # an exception above: never leave the server behind
            bounded.collect(proc, 0.0, kill_session=True, grace_s=_KILLED_GRACE_S)


# --- perftest -------------------------------------------------------------------------

_BW_HEADER = re.compile(r"#bytes\s+#iterations\s+BW peak\[(Gb|MB)/sec\]")
# perftest 1.x has no MsgRate column; newer perftest adds a "BW min" column after the
# message rate (kept out: not judged).
_BW_ROW = re.compile(
    rf"^\s*(\d+)\s+(\d+)\s+({_NUMBER})\s+({_NUMBER})(?:\s+({_NUMBER}))?(?:\s+{_NUMBER})?\s*$"
)
_LAT_HEADER = re.compile(r"#bytes\s+#iterations\s+t_min\[usec\]")
_LAT_ROW = re.compile(rf"^\s*(\d+)\s+(\d+)((?:\s+{_NUMBER}){{3,7}})\s*$")
_LAT_FIELDS = ("t_min", "t_max", "t_typical", "t_avg", "t_stdev", "p99", "p999")


@dataclass(frozen=True)
class BwRow:
    """One message size of a perftest bandwidth run, in Gb/s whatever the tool printed."""

    nbytes: int
    iterations: int
    peak_gbps: float
    average_gbps: float
    msg_rate_mpps: float | None  # None: a perftest that prints no MsgRate


@dataclass(frozen=True)
class LatRow:
    """One message size of a perftest latency run, microseconds (None: not printed)."""

    nbytes: int
    iterations: int
    usec: dict[str, float] = field(default_factory=dict)


def parse_perftest_bw(text: str) -> list[BwRow]:
    rows: list[BwRow] = []
    scale = None
    for line in map(untagged, text.splitlines()):
        header = _BW_HEADER.search(line)
        if header:
            # perftest's MB/sec is 2^20 bytes per second (its MB is a MiB).
            scale = 1.0 if header.group(1) == "Gb" else 8 * 1024 * 1024 / 1e9
            continue
        match = _BW_ROW.match(line) if scale is not None else None
        if match:
            size, iters, peak, avg, rate = match.groups()
            rows.append(BwRow(int(size), int(iters), float(peak) * scale, float(avg) * scale,
                              float(rate) if rate is not None else None))  # fmt: skip
    return rows


def parse_perftest_lat(text: str) -> list[LatRow]:
    rows: list[LatRow] = []
    seen_header = False
    for line in text.splitlines():
        if _LAT_HEADER.search(line):
            seen_header = True
            continue
        match = _LAT_ROW.match(line) if seen_header else None
        if match:
            numbers = [float(v) for v in match.group(3).split()]
            rows.append(LatRow(int(match.group(1)), int(match.group(2)),
                               dict(zip(_LAT_FIELDS, numbers, strict=False))))  # fmt: skip
    return rows


# --- nccl-tests -----------------------------------------------------------------------

_NCCL_ROW = re.compile(
    rf"^\s*(\d+)\s+(\d+)\s+(\w+)\s+(\w+)\s+(-?\d+)\s+({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})"
    rf"\s+(\S+)\s+({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})\s+(\S+)"
)
_NCCL_AVG = re.compile(rf"^#\s*Avg bus bandwidth\s*:\s*({_NUMBER})")
_NCCL_OOB = re.compile(r"^#\s*Out of bounds values\s*:\s*(\d+)\s+(OK|FAILED)")
_NCCL_RANK = re.compile(r"^#\s*Rank\s+\d+\s")


@dataclass(frozen=True)
class NcclRow:
    """One size of an nccl-tests run: out-of-place and in-place busbw (GB/s), #wrong."""

    nbytes: int
    dtype: str
    redop: str
    busbw_oop: float
    busbw_ip: float
    wrong: int  # -1 when the tool printed N/A (no validation)


@dataclass(frozen=True)
class NcclResult:
    """An nccl-tests run: its rows, the average bus bandwidth and the validation summary."""

    rows: tuple[NcclRow, ...]
    avg_busbw: float | None
    out_of_bounds: int | None
    ranks: int = 0  # "#  Rank N ..." lines of the device list (0: none printed)

    @property
    def wrong(self) -> int:
        return sum(max(0, r.wrong) for r in self.rows)


def _count(text: str) -> int:
    """A #wrong cell: a count as %g prints it ("0", "1.04858e+06"); -1 for "N/A"."""
    try:
        return round(float(text))
    except ValueError:
        return -1


def parse_nccl_tests(text: str) -> NcclResult:
    rows, avg, oob, ranks = [], None, None, 0
    for line in map(untagged, text.splitlines()):
        if line.lstrip().startswith("#"):
            if found := _NCCL_AVG.match(line.strip()):
                avg = float(found.group(1))
            elif found := _NCCL_OOB.match(line.strip()):
                oob = int(found.group(1))
            elif _NCCL_RANK.match(line.strip()):
                ranks += 1
            continue
        if found := _NCCL_ROW.match(line):
            g = found.groups()
            rows.append(NcclRow(int(g[0]), g[2], g[3], float(g[7]), float(g[11]),
                                max(_count(g[8]), _count(g[12]))))  # fmt: skip
    return NcclResult(tuple(rows), avg, oob, ranks)


# --- dcgmi diag -----------------------------------------------------------------------


@dataclass(frozen=True)
class DcgmResult:
    """One test's verdict on one GPU ("gpu3"), or on all of them ("node")."""

    category: str
    test: str
    component: str
    status: str  # normalised: PASS, FAIL, WARN, SKIP
    warnings: tuple[str, ...] = ()


_STATUS = {"pass": "PASS", "fail": "FAIL", "warn": "WARN", "skip": "SKIP", "skipped": "SKIP"}


def _entity(result: dict[str, Any]) -> str:
    if "entity_id" in result:  # DCGM 4.x
        return f"{str(result.get('entity_group', 'GPU')).lower()}{result['entity_id']}"
    ids = result.get("gpu_id", result.get("gpu_ids"))
    text = str(ids) if ids is not None else ""
    return f"gpu{text}" if text.isdigit() else "node"


def _warnings(result: dict[str, Any]) -> tuple[str, ...]:
    out = []
    for warning in result.get("warnings") or ():
        if isinstance(warning, dict):
            out.append(str(warning.get("warning") or warning.get("message") or warning))
        else:
            out.append(str(warning))
    return tuple(out)


def parse_dcgm(text: str) -> tuple[list[DcgmResult], dict[str, Any]]:
    """The per-test, per-GPU results, and the document's metadata (version, driver,
    runtime_error). ValueError when the text holds no DCGM diagnostic JSON."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in dcgmi output")
    doc = json.loads(text[start : text.rfind("}") + 1])
    body = doc.get("DCGM GPU Diagnostic") or doc.get("DCGM Diagnostic")
    if not isinstance(body, dict):
        raise ValueError("neither 'DCGM GPU Diagnostic' nor 'DCGM Diagnostic' in dcgmi JSON")
    meta = {
        "version": body.get("version") or (doc.get("metadata") or {}).get("version"),
        "driver": body.get("driver_version_detected")
        or (doc.get("metadata") or {}).get("Driver Version Detected"),
        "runtime_error": body.get("runtime_error"),
    }
    out = []
    for category in body.get("test_categories") or ():
        for test in (category or {}).get("tests") or ():
            if not test:
                continue  # dcgmi writes `null` between tests in some versions
            for result in test.get("results") or ():
                status = _STATUS.get(str(result.get("status", "")).strip().lower(), "WARN")
                out.append(DcgmResult(str(category.get("category", "")), str(test.get("name")),
                                      _entity(result), status, _warnings(result)))  # fmt: skip
    return out, meta
