"""GPU trends from NVML counters: correctable ECC rate, remapped-row growth and the spare
rows left, NVLink error rates, and the share of time (or of samples) a GPU was throttled.

Each reads the same NVML snapshot the gpu.* checks read (one session per run: group gpu).
A counter series is keyed per GPU index and tagged with the GPU's UUID, so a replaced
board starts a new baseline instead of counting its lifetime total as a rise.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodecheck.checks.context import CheckContext
from nodecheck.checks.gpu.common import GROUP, _result, _snapshot
from nodecheck.checks.registry import Option
from nodecheck.checks.trend import common
from nodecheck.checks.trend.rates import HOUR, Limits, judge_counter, share
from nodecheck.core.results import CheckResult, Status
from nodecheck.probes.nvml import model as nvml_model
from nodecheck.store.series import Reading

if TYPE_CHECKING:
    from nodecheck.probes.nvml.model import Gpu

Extract = Callable[["Gpu"], "tuple[float, str] | None"]  # (value, boot scope) or unreadable


def _readings(
    ctx: CheckContext, cid: str, extract: Extract, now: float
) -> tuple[dict[str, list[Reading]], list[CheckResult]]:
    """This run's reading of every GPU, and the SKIPs of what could not be read."""
    snap = _snapshot(ctx, all_gpus=True)
    if not snap.available or not snap.gpus:
        why = snap.init_error.name if snap.init_error else "no GPUs visible"
        return {}, [_result(cid, Status.SKIP, f"NVML unavailable: {why} (see gpu.count)")]
    boot = common.boot_id(ctx)
    readings: dict[str, list[Reading]] = {}
    skipped: list[CheckResult] = []
    for gpu in snap.gpus:
        got = extract(gpu)
        if got is None:
            skipped.append(_result(cid, Status.SKIP, "counter not readable", gpu))
            continue
        value, scope = got
        # A lifetime counter survives reboots: no boot id, only the board (UUID) scopes it.
        readings[gpu.component] = [
            Reading(now, value, boot if scope == "boot" else "", gpu.uuid or "")
        ]
    return readings, skipped


def _counter_check(
    ctx: CheckContext, cid: str, name: str, extract: Extract, what: str
) -> Iterator[CheckResult]:
    now = time.time()
    new, skipped = _readings(ctx, cid, extract, now)
    yield from skipped
    if not new:
        return
    limits = common.limits_of(ctx.options)

    def judge(component: str, got: tuple[Reading, ...]) -> CheckResult:
        trend = judge_counter(got, now, limits)
        return common.trend_result(cid, component, trend, what, ctx.options, value=got[-1].value)

    yield from common.judge_all(cid, ctx, name, new, now, judge)


# --------------------------------------------------------------------------- trend.gpu_ecc


def _corrected(gpu: Gpu) -> tuple[float, str] | None:
    """Prefer the lifetime (aggregate) count: it survives reboots and driver reloads; the
    volatile one starts again at every reset."""
    if gpu.ecc_corrected_aggregate is not None:
        return float(gpu.ecc_corrected_aggregate), "life"
    if gpu.ecc_corrected_volatile is not None:
        return float(gpu.ecc_corrected_volatile), "boot"
    return None


@common.trend_check(
    "trend.gpu_ecc",
    summary="correctable ECC errors per hour, and their growth, from the node's own history",
    options=common.counter_options(warn=10, fail=100, growth=4),
    group=GROUP,
)
def trend_gpu_ecc(ctx: CheckContext) -> Iterator[CheckResult]:
    """Correctable (single-bit) ECC errors are corrected, so no job fails on them, but a
    GPU whose count climbs is a GPU whose HBM is degrading: on Titan's 18,000 GPUs such
    errors came from a small set of cards (Tiwari et al., HPCA 2015), and on Ampere and
    later the same cells end in row remaps and uncorrectable errors (NVIDIA, GPU Memory
    Error Management). A healthy GPU shows near zero; defaults: WARN at 10/h, FAIL at
    100/h over 24 h, or at x4 the previous 24 h, while still going in the last 6 h. Fix:
    the node drains after its jobs; validate it (deep tier), RMA when it keeps climbing."""
    yield from _counter_check(
        ctx, "trend.gpu_ecc", "gpu.ecc.corrected", _corrected, "correctable ECC"
    )


# ------------------------------------------------------------------------- trend.gpu_remap

# NVIDIA, GPU Memory Error Management, "Row Remapping": Ampere and later support up to 512
# remappings of the frame buffer; the RMA policy sets the failure flag "after 512 total
# remappings for an uncorrectable memory error", or on a ninth in one bank.
TOTAL_SPARE_ROWS = 512


@common.trend_check(
    "trend.gpu_remap",
    "remapped rows growing over days, and the spare rows left",
    options={
        "window_h": Option((int, float), 168.0, "hours new remaps are counted over", low=1),
        "recent_h": Option(
            (int, float), 48.0, "a new remap within these hours makes growth a FAIL", low=1
        ),
        "warn_rows": Option(int, 1, "new remapped rows in the window that WARN", low=1),
        "fail_rows": Option(int, 8, "new remapped rows in the window that FAIL", low=1),
        "total_spare_rows": Option(
            int, TOTAL_SPARE_ROWS, "remaps the part supports (NVIDIA: 512 on Ampere+)", low=1
        ),
        "warn_spare_rows": Option(int, 64, "spare rows left below which WARN", low=0),
        "fail_spare_rows": Option(int, 16, "spare rows left below which FAIL", low=0),
    },
    group=GROUP,
)
def trend_gpu_remap(ctx: CheckContext) -> Iterator[CheckResult]:
    """Every remapped row is a memory row that failed. One now and then is what the spare
    rows are for; several in a week (default FAIL: 8 in 168 h, one of them in the last
    48 h, a bank's worth of uncorrectable spares per NVIDIA's RMA policy) is HBM going bad,
    and a GPU close to its 512 remappings is close to the row-remap failure that makes it
    an RMA. Fix: drain after the jobs, validate, and plan the RMA (nvidia field diag)."""
    cid = "trend.gpu_remap"
    opts = ctx.options
    now = time.time()

    def remapped(gpu: Gpu) -> tuple[float, str] | None:
        rows = gpu.remapped_rows
        return (float(rows.corrRows + rows.uncRows), "life") if rows is not None else None

    new, skipped = _readings(ctx, cid, remapped, now)
    yield from skipped
    if not new:
        return
    window = float(opts["window_h"])
    per_hour = Limits(
        warn_per_hour=opts["warn_rows"] / window,
        fail_per_hour=opts["fail_rows"] / window,
        fail_growth=0,
        window_h=window,
        recent_h=min(float(opts["recent_h"]), window),
        min_history_h=0,
    )

    def judge(component: str, got: tuple[Reading, ...]) -> CheckResult:
        trend = judge_counter(got, now, per_hour)
        rows = int(got[-1].value)
        new_rows = round((trend.rate or 0) * trend.hours)
        recent = trend.recent is not None and trend.recent > 0
        spare = int(opts["total_spare_rows"]) - rows
        level = "ok"
        if new_rows >= opts["fail_rows"] and recent:
            level = "fail"
        elif new_rows >= opts["warn_rows"]:
            level = "warn"
        if spare < opts["fail_spare_rows"]:
            level = "fail"
        elif spare < opts["warn_spare_rows"] and level == "ok":
            level = "warn"
        text = f"{new_rows} rows remapped in {window:g} h, {rows} in all, {spare} spare left"
        values = {"new_rows": new_rows, "rows": rows, "spare_rows": spare}
        return common.result(cid, level, text, component, values, opts)

    yield from common.judge_all(cid, ctx, "gpu.remap.rows", new, now, judge)


# ------------------------------------------------------------------------ trend.gpu_nvlink


def _nvlink_errors(names: list[str]) -> Extract:
    def extract(gpu: Gpu) -> tuple[float, str] | None:
        counts = [link.counters[n] for link in gpu.nvlinks for n in names if n in link.counters]
        return (float(sum(counts)), "boot") if counts else None

    return extract


@common.trend_check(
    "trend.gpu_nvlink",
    summary="NVLink error counters (replay, recovery, CRC) per hour, summed over a GPU's links",
    options={
        "counters": Option(
            list,
            ["replay", "recovery", "crc_flit", "crc_data"],
            "NVLink counters summed (names of the NVML model's NVLINK_COUNTER_SPECS)",
            item=str,
            choices=tuple(spec.name for spec in nvml_model.NVLINK_COUNTER_SPECS),
        ),
        **common.counter_options(warn=10, fail=100, growth=4),
    },
    group=GROUP,
)
def trend_gpu_nvlink(ctx: CheckContext) -> Iterator[CheckResult]:
    """NVLink retries data-link errors (replay, CRC) and recovers links, so a job only
    slows down, until the link trains down or takes an Xid 74. gpu.nvlink judges one run's
    rise (its defaults: 100 replays or CRC flits, any recovery); the trend catches the
    link that stays under that in every run but errs hour after hour. Defaults: WARN at
    10/h, FAIL at 100/h over 24 h while still going, or x4 the previous day. These are
    counts, not a bit-error rate: NVML exposes no bit count on Hopper links. Fix: drain
    after the jobs, validate (deep.p2p), reseat or RMA the board or baseboard."""
    names = list(ctx.options["counters"])
    yield from _counter_check(
        ctx, "trend.gpu_nvlink", "gpu.nvlink.errors", _nvlink_errors(names), "NVLink errors"
    )


# ------------------------------------------------------------------------ trend.gpu_clocks

THROTTLES = ("hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")
# nvmlDeviceGetViolationStatus's policies the collector reads (model: <policy>_violation).
POLICIES = ("power", "thermal")
# Per GPU and policy two series of one run's reading each: "gpuN/<policy>" the violation
# time (ns) and "gpuN/<policy>/ref" its reference time (us), paired by the run's time.
VIOLATION_SERIES = "gpu.clocks.violation"


@common.trend_check(
    "trend.gpu_clocks",
    summary="share of time (NVML violation counters) or of samples with a hardware throttle",
    options={
        "reasons": Option(
            list,
            list(THROTTLES),
            "clock event reasons counted as throttled (the sampled share)",
            item=str,
            choices=tuple(nvml_model.CLOCK_EVENT_REASONS),
        ),
        "policies": Option(
            list,
            ["thermal"],
            "violation-time policies judged where NVML keeps them (power includes running "
            "capped at the power limit, a busy GPU's normal state)",
            item=str,
            choices=POLICIES,
        ),
        "window_h": Option((int, float), 168.0, "hours the share is taken over", low=1),
        "min_samples": Option(int, 12, "readings needed before a share is judged", low=1),
        "warn_share": Option(float, 0.05, "share throttled that WARNs", low=0, high=1),
        "fail_share": Option(float, 0.25, "share throttled that FAILs", low=0, high=1),
    },
    group=GROUP,
)
def trend_gpu_clocks(ctx: CheckContext) -> Iterator[CheckResult]:
    """A GPU that throttles more every week is losing its cooling or its power delivery
    (fans, a clogged heat sink, a PSU): every job on it runs slower and holds back its
    peers. Where NVML keeps violation times (nvmlDeviceGetViolationStatus: the ns a policy
    held the GPU below its application clocks, with the time it was read) the share is of
    the time itself: d(violation ns) / d(reference time) between the node's readings, over
    `policies` (default thermal: power counts running at the power cap, normal on a busy
    GPU); a counter that went back (driver reload, reboot) is a new baseline. Elsewhere,
    NVML's throttle reasons are sampled at each health and epilog run (busy or not): the
    share of samples with a hardware slowdown, HW thermal slowdown or power brake asserted
    stands in for the share of time. The message names the source. Defaults, both sources:
    WARN at 5 %, FAIL at 25 % of the window after at least 12 readings (NVIDIA documents
    these reasons and thermal violations as the board protecting itself, never as normal
    operation, unlike the SW power cap). Fix: drain after the jobs; check airflow, fans and
    the BMC's PSU/thermal log, then validate."""
    cid = "trend.gpu_clocks"
    opts = ctx.options
    now = time.time()
    bits = sum(nvml_model.CLOCK_EVENT_REASONS[name] for name in opts["reasons"])
    policies = tuple(opts["policies"])

    def throttled(gpu: Gpu) -> tuple[float, str] | None:
        mask = gpu.clocks_event_reasons
        return (1.0 if mask & bits else 0.0, "boot") if mask is not None else None

    new, skipped = _readings(ctx, cid, throttled, now)
    counted, timed = _violation_readings(ctx, policies, now)
    yield from (result for result in skipped if result.component not in timed)
    if not new and not timed:
        return
    keep_opts: dict[str, Any] = {"window_h": float(opts["window_h"]) / 2}  # keep one window
    since = now - float(opts["window_h"]) * HOUR

    def level_of(part: float | None, readings: int) -> str:
        if part is None or readings < opts["min_samples"]:
            return "young"
        if part >= opts["fail_share"]:
            return "fail"
        return "warn" if part >= opts["warn_share"] else "ok"

    def judge(component: str, got: tuple[Reading, ...]) -> CheckResult:
        part, samples = share(got, since)
        pct = f"{100 * (part or 0):.0f}%"
        text = f"hardware throttle in {pct} of {samples} samples over {opts['window_h']:g} h"
        values = {"share": part, "samples": samples, "source": "samples"}
        return common.result(cid, level_of(part, samples), text, component, values, opts)

    def judge_time(component: str, got: dict[str, tuple[Reading, ...]]) -> CheckResult:
        found = {
            policy: violation_share(
                got.get(f"{component}/{policy}", ()),
                got.get(f"{component}/{policy}/ref", ()),
                since,
            )
            for policy in POLICIES
        }
        judged = [found[policy] for policy in policies]
        worst = max(judged, key=lambda item: item.share or 0.0)
        pct = f"{100 * (worst.share or 0):.0f}%"
        text = (
            f"{'/'.join(policies)} throttle in {pct} of the time over {worst.hours:.0f} h"
            " (NVML violation counters)"
        )
        values: dict[str, Any] = {
            "share": worst.share,
            "samples": worst.readings,
            "hours": round(worst.hours, 2),
            "resets": worst.resets,
            "source": "violation_counters",
            **{f"{policy}_share": _round(found[policy].share) for policy in POLICIES},
        }
        level = level_of(worst.share, worst.readings)
        return common.result(cid, level, text, component, values, opts)

    try:
        got = common.record_and_read(
            ctx.settings.state_dir,
            "gpu.clocks.throttled",
            new,
            common.keep_s(keep_opts),
            now,
            ctx.keeps_state,
        )
        got_time = (
            common.record_and_read(
                ctx.settings.state_dir,
                VIOLATION_SERIES,
                counted,
                common.keep_s(keep_opts),
                now,
                ctx.keeps_state,
            )
            if counted
            else {}
        )
    except Exception as exc:  # the state file's failure is ours, not the hardware's
        yield common.state_error(cid, exc)
        return
    for component in sorted(set(got) | timed):
        if component in timed:
            yield judge_time(component, got_time)
        else:
            yield judge(component, got[component])


def _violation_readings(
    ctx: CheckContext, policies: tuple[str, ...], now: float
) -> tuple[dict[str, list[Reading]], set[str]]:
    """This run's violation readings of every GPU that has them (both series of each policy
    read), and the GPUs whose every judged policy was read: those the counters judge."""
    snap = _snapshot(ctx, all_gpus=True)
    if not snap.available:
        return {}, set()
    boot = common.boot_id(ctx)
    readings: dict[str, list[Reading]] = {}
    timed: set[str] = set()
    for gpu in snap.gpus:
        read = {p: getattr(gpu, f"{p}_violation") for p in POLICIES}
        for policy, value in read.items():
            if value is None:
                continue
            key, tag = f"{gpu.component}/{policy}", gpu.uuid or ""
            # Both start again when the driver loads: the boot scopes them, the UUID the board.
            readings[key] = [Reading(now, float(value.violationTime), boot, tag)]
            readings[f"{key}/ref"] = [Reading(now, float(value.referenceTime), boot, tag)]
        # No policy named: the samples judge every GPU.
        if policies and all(read[policy] is not None for policy in policies):
            timed.add(gpu.component)
    return readings, timed


@dataclass(frozen=True)
class TimeShare:
    """A violation counter over a window: the share of the time covered it was throttled."""

    share: float | None
    hours: float  # time covered by intervals counted
    readings: int  # readings in the window
    resets: int  # intervals skipped: counter back, another boot or board


def violation_share(
    violation_ns: Sequence[Reading], reference_us: Sequence[Reading], since: float
) -> TimeShare:
    """d(violation ns) / d(reference time) summed over consecutive readings since `since`
    (the two series paired by the run's time). An interval where either went back, or the
    boot or board changed, is a new baseline: neither its time nor its rise is counted."""
    refs = {r.at: r.value for r in reference_us}
    points = [(r, refs[r.at]) for r in violation_ns if r.at >= since and r.at in refs]
    throttled_ns = covered_ns = 0.0
    resets = 0
    for (before, ref0), (after, ref1) in itertools.pairwise(points):
        rise, elapsed_ns = after.value - before.value, (ref1 - ref0) * 1000.0
        if after.boot != before.boot or after.tag != before.tag or rise < 0 or elapsed_ns <= 0:
            resets += 1
            continue
        throttled_ns += rise
        covered_ns += elapsed_ns
    # Two calls read at slightly different moments: never more than all of the time.
    part = min(throttled_ns / covered_ns, 1.0) if covered_ns > 0 else None
    return TimeShare(part, covered_ns / 1e9 / HOUR, len(points), resets)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
