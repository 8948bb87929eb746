"""gpu.pcie and gpu.nvlink: PCIe link width and generation, NVLink state and errors."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from nodecheck.checks.context import CheckContext
from nodecheck.checks.registry import Option, check
from nodecheck.core.results import SIGNALS_KEY, CheckResult, Status
from nodecheck.probes.nvml import model as nvml_model

if TYPE_CHECKING:
    from nodecheck.probes.nvml.model import Gpu
from nodecheck.checks.gpu.common import (
    GROUP,
    ONLY_JOB_GPUS,
    TIMEOUT_S,
    _error_result,
    _per_gpu,
    _result,
    _snapshot,
)


@check(
    "gpu.pcie",
    severity="medium",
    remedy="admin",
    summary="PCIe link width (and optionally generation) not below max or expected",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "expected_width": Option(int, None, "expected lanes, e.g. 16 (unset: the GPU's max)"),
        "expected_gen": Option(int, None, "expected generation, e.g. 5 (implies check_gen)"),
        "check_gen": Option(
            bool, False, "also compare the generation (GPUs drop to gen1 at idle to save power)"
        ),
        "only_job_gpus": ONLY_JOB_GPUS,
    },
)
def gpu_pcie(ctx: CheckContext) -> Iterator[CheckResult]:
    """A link that trained narrower (x8 instead of x16) halves host<->GPU bandwidth: data
    loading and NCCL over PCIe crawl. The current generation drops at idle on purpose, so
    it is only compared when configured. Fix: reseat the GPU/riser, check the slot and
    cables; a link that degrades again is hardware."""
    cid = "gpu.pcie"
    opts = ctx.options
    needs = {
        "pcie_width_current": "PCIe link width",
        "pcie_width_max": "PCIe max link width",
        "pcie_gen_current": "PCIe link generation",
        "pcie_gen_max": "PCIe max link generation",
    }

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        width, gen = gpu.pcie_width_current, gpu.pcie_gen_current
        values = {
            "width": width,
            "max_width": gpu.pcie_width_max,
            "gen": gen,
            "max_gen": gpu.pcie_gen_max,
        }
        want_width = opts["expected_width"] or gpu.pcie_width_max
        want_gen = opts["expected_gen"] or (gpu.pcie_gen_max if opts["check_gen"] else None)
        if want_width and width is not None and width < want_width:
            yield _result(
                cid, Status.FAIL, f"PCIe x{width} (expected x{want_width})", gpu, **values
            )
        elif want_gen and gen is not None and gen < want_gen:
            yield _result(
                cid, Status.FAIL, f"PCIe gen{gen} (expected gen{want_gen})", gpu, **values
            )
        else:
            yield _result(cid, Status.PASS, f"PCIe gen{gen} x{width}", gpu, **values)

    yield from _per_gpu(ctx, cid, judge, needs)


# --- gpu.nvlink -----------------------------------------------------------------------

NVLINK_STATE_KEY = "gpu.nvlink.counters"
# {"v": 2, "gpus": {uuid: {"t", "boot", "links": {link: counters}, "seen": [links]}}}: "links"
# are the active links' counters of the last reading, "seen" every link ever active (older
# entries lack it: their "links" stand in).
NVLINK_STATE_VERSION = 2
# Waiting for the state lock ends well inside the gpu group's shared deadline.
NVLINK_STATE_BUSY_MS = 2000
# Every counter the collector reads (nvml/model.py's NVLINK_COUNTER_SPECS, in its order), with
# its default allowed rise between two runs on one link: policy, so it lives with the check.
DEFAULT_NVLINK_RISE: dict[str, int] = {
    "replay": 100,
    "recovery": 0,
    "crc_flit": 100,
    "crc_data": 0,
    "ecc_data": 100,
    # NVLink5 (Blackwell)
    "rx_errors": 100,
    "local_link_integrity": 0,
    "link_recovery_failed": 0,
    "link_recovery": 0,
    "effective_errors": 100,  # after FEC
    "symbol_errors": 1_000_000,  # FEC corrects these
}
# Counters new to a platform (NVLink5 on Blackwell): their rise is report-only until the site
# says otherwise (`report_only`, run/report_only.py): their allowances are not measured yet,
# and an untested signal must not drain a rack.
NEW_COUNTERS = dict.fromkeys(
    nvml_model.NVLINK5_COUNTERS,
    "Blackwell NVLink5 counter (allowance not yet measured on real nodes)",
)
# NVLink-C2C (Grace parts): new to nodecheck everywhere it exists.
NEW_SIGNALS = {
    **NEW_COUNTERS,
    "c2c": "GH200/GB200/GB300: an NVLink-C2C link not active",
    "effective_ber": "Blackwell NVLink5 effective BER (limit not yet measured on real nodes)",
}
# NVLink5's effective BER (after FEC) above which a link WARNs: what NVIDIA's DCGM takes as
# the limit (DcgmNs::Utils::IsEffectiveBerThresholdExceeded, common/tests/DcgmUtilitiesTests.cpp:
# 1e-12 is within, 2e-12 and 1.1e-12 are over).
MAX_EFFECTIVE_BER = 1e-12


@check(
    "gpu.nvlink",
    severity="high",
    remedy="reset-gpu",
    summary="expected NVLinks active; NVLink error counters not rising since the last run",
    group=GROUP,
    timeout_s=TIMEOUT_S,
    options={
        "expected_active": Option(
            int,
            None,
            "active links each GPU must have, e.g. 18 on H100 SXM (unset: every link that was "
            "active at the last run)",
        ),
        "max_increase": Option(
            dict,
            DEFAULT_NVLINK_RISE,
            "per counter (replay, recovery, crc_flit, crc_data, ecc_data; on Blackwell "
            "rx_errors, local_link_integrity, link_recovery_failed, link_recovery, "
            "effective_errors, symbol_errors): rise allowed between two runs on one link",
            item=int,
        ),
        "max_window_s": Option(
            (int, float), 86400, "a reading older than this is only a new baseline"
        ),
        "max_effective_ber": Option(
            float,
            MAX_EFFECTIVE_BER,
            "NVLink5 (Blackwell): a link's effective BER (after FEC) above this WARNs",
            low=0,
        ),
        "only_job_gpus": ONLY_JOB_GPUS,
    },
    new_signals=NEW_SIGNALS,
    # the legacy counters too: a site may list them in report_only as well
    signals={spec.name: "NVLink error counter" for spec in nvml_model.NVLINK_COUNTER_SPECS},
)
def gpu_nvlink(ctx: CheckContext) -> Iterator[CheckResult]:
    """A down NVLink makes GPU<->GPU traffic take the slow path or NCCL fail outright;
    rising recovery/CRC errors are a link on its way out. Fix: reset the GPUs or reboot;
    on NVSwitch systems check nvidia-fabricmanager; a link that keeps failing is hardware
    (baseboard, GPU). Counter readings are kept in the state dir between hook runs (per
    GPU UUID, with the boot id and time): a reading from before a reboot or older than
    `max_window_s` is only a new baseline; a manual run compares without storing. Without
    `expected_active`, a link is down when it was active at the last stored reading: NVML
    reports unwired links of bridged PCIe parts (an H100 PCIe pair: 12 of 18) as inactive,
    and says "Link is supported: false" of wired ones too, so it cannot tell them apart.
    NVLink5 (Blackwell) also reports each link's bit error rate: the highest effective (after
    FEC) and symbol BER are reported, and an effective BER over `max_effective_ber` (DCGM's
    1e-12) WARNs, report-only (signal effective_ber) like the other NVLink5 signals."""
    cid = "gpu.nvlink"
    opts = ctx.options
    limits = {**DEFAULT_NVLINK_RISE, **opts["max_increase"]}
    unknown = set(limits) - set(DEFAULT_NVLINK_RISE)
    if unknown:
        raise ValueError(f"max_increase: unknown counters {sorted(unknown)}")
    snap = _snapshot(ctx)
    readings: dict[str, dict[str, dict[str, int]]] = {}
    seen: dict[str, list[int]] = {}  # per GPU UUID: every link ever seen active
    previous: dict[str, Any] = {}
    boot, now = _boot_id(ctx), time.time()

    def judge(gpu: Gpu) -> Iterator[CheckResult]:
        yield from _c2c(cid, gpu)
        err = gpu.errors.get("nvlink")
        if err is not None and not gpu.nvlinks:
            if err.not_supported and opts["expected_active"]:
                msg = f"no NVLink (expected {opts['expected_active']} active links)"
                yield _result(cid, Status.FAIL, msg, gpu)
            elif err.not_supported:
                yield _result(cid, Status.SKIP, "no NVLink on this GPU", gpu)
            else:
                yield _error_result(cid, err, "NVLink state", gpu)
            return
        broken = [link for link in gpu.nvlinks if "state" in link.errors]
        if broken:
            yield _error_result(cid, broken[0].errors["state"], f"NVLink {broken[0].link}", gpu)
            return
        active = [link.link for link in gpu.nvlinks if link.active]
        inactive = [link.link for link in gpu.nvlinks if not link.active]
        entry = previous.get(gpu.uuid or "") or {}
        # Sticky: a link that went down stays expected at the next runs (until it is back,
        # or the board, a new UUID, is swapped), so a drain for it is not resumed unrepaired.
        was_active = {int(link) for link in entry.get("seen", entry.get("links") or {})}
        expected = opts["expected_active"]
        # Without a count to meet, only a link seen active before can be "down".
        down = inactive if expected is not None else [n for n in inactive if n in was_active]
        values: dict[str, Any] = {
            "active": len(active),
            "links": len(gpu.nvlinks),
            "down": down,
            "inactive": inactive,
        }
        if gpu.uuid:
            readings[gpu.uuid] = {
                str(link.link): dict(link.counters) for link in gpu.nvlinks if link.active
            }
            seen[gpu.uuid] = sorted(was_active | set(active))
        if expected is not None and len(active) < expected:
            where = f"; down: {_list(down)}" if down else ""
            msg = f"{len(active)} NVLinks active (expected {expected}){where}"
            yield _result(cid, Status.FAIL, msg, gpu, **values)
            return
        if expected is None and down:
            msg = f"NVLink {_list(down)} down ({len(active)}/{len(gpu.nvlinks)} active)"
            yield _result(cid, Status.FAIL, msg, gpu, **values, was_active=sorted(was_active))
            return
        if active and not any(link.counters for link in gpu.nvlinks if link.active):
            # Nothing to compare (Blackwell without NVLink5 fields, a driver refusing them):
            # a PASS would claim the links were watched.
            first = next(iter(next(x for x in gpu.nvlinks if x.active).errors.values()), None)
            why = f" ({first.name})" if first else ""
            msg = f"{len(active)} NVLinks active; no NVLink error counter readable{why}"
            yield _result(cid, Status.WARN, msg, gpu, sev="medium", act="admin", **values)
            return
        before, why = _nvlink_window(entry or None, boot, now, opts["max_window_s"])
        rises = _nvlink_rises(before, readings.get(gpu.uuid or "", {}))
        over = [(link, c, d) for link, c, d in rises if d > limits.get(c, 0)]
        values["rises"] = [f"link{link} {c} +{d}" for link, c, d in rises]
        values.update(_ber_values(gpu))
        if why:
            values["baseline"] = why
        if over:
            link, counter, delta = max(over, key=lambda item: item[2] - limits.get(item[1], 0))
            more = f" (+{len(over) - 1} more)" if len(over) > 1 else ""
            msg = f"NVLink {link} {counter} errors +{delta} since last run{more}"
            # The counters it rests on: report-only while all of them are new signals.
            values[SIGNALS_KEY] = sorted({c for _, c, _ in over})
            yield _result(cid, Status.FAIL, msg, gpu, sev="medium", act="admin", **values)
            return
        worst = _worst_ber(gpu)
        if worst is not None and worst[1] > opts["max_effective_ber"]:
            link, ber = worst
            msg = f"NVLink {link} effective BER {ber:.1e} (over {opts['max_effective_ber']:.0e})"
            values[SIGNALS_KEY] = ["effective_ber"]
            yield _result(cid, Status.WARN, msg, gpu, sev="medium", act="admin", **values)
        else:
            unjudged = [n for n in inactive if n not in down]
            note = f" ({len(unjudged)} inactive, never seen active)" if unjudged else ""
            yield _result(cid, Status.PASS, f"{len(active)} NVLinks active{note}", gpu, **values)

    if not (snap.available and snap.gpus):
        yield from _per_gpu(ctx, cid, judge, snap=snap)
        return
    from nodecheck.store.transaction import locked_update

    try:  # read, judge and store in one transaction: concurrent runs see each other's reading
        with locked_update(ctx.settings.state_dir, NVLINK_STATE_BUSY_MS) as store:
            blob = store.get_json(NVLINK_STATE_KEY) or {}
            if blob.get("v") == NVLINK_STATE_VERSION:
                previous.update(blob.get("gpus") or {})
            results = list(_per_gpu(ctx, cid, judge, snap=snap))
            if ctx.keeps_state:
                entries = {
                    uuid: {"t": now, "boot": boot, "links": links, "seen": seen[uuid]}
                    for uuid, links in readings.items()
                }
                gpus = {**previous, **entries}
                store.put_json(NVLINK_STATE_KEY, {"v": NVLINK_STATE_VERSION, "gpus": gpus})
    except Exception as exc:  # state trouble must not hide a down link
        previous.clear()
        readings.clear()
        seen.clear()
        yield from _per_gpu(ctx, cid, judge, snap=snap)
        msg = f"NVLink counters not compared: state unavailable: {type(exc).__name__}: {exc}"
        yield _result(cid, Status.ERROR, msg[:240])
        return
    yield from results


def _c2c(cid: str, gpu: Gpu) -> Iterator[CheckResult]:
    """The Grace CPU <-> GPU link (NVML_FI_DEV_C2C_LINK_*): a link NVML lists but reports
    inactive FAILs (report-only until enabled: signal "c2c"); a GPU without C2C, or whose
    C2C status cannot be read, says nothing here (the NVLink verdict stands alone)."""
    links = gpu.c2c_links
    if not links or all(links):
        return
    down = [n for n, status in enumerate(links) if not status]
    active = len(links) - len(down)
    msg = f"NVLink-C2C link {_list(down)} inactive ({active}/{len(links)} active)"
    values = {"c2c_links": list(links), SIGNALS_KEY: ["c2c"]}
    yield _result(cid, Status.FAIL, msg, gpu, sev="high", act="reboot", **values)


def _ber_values(gpu: Gpu) -> dict[str, Any]:
    """NVLink5's decoded BERs, the highest over the active links, as reported values; none
    on a part without them (Hopper and older)."""
    out: dict[str, Any] = {}
    for name in nvml_model.NVLINK_BER_FIELDS:
        rates = [
            nvml_model.decode_ber(x.ber[name]) for x in gpu.nvlinks if x.active and name in x.ber
        ]
        if rates:
            out[f"{name}_ber"] = max(rates)
    return out


def _worst_ber(gpu: Gpu) -> tuple[int, float] | None:
    """The active link with the highest effective BER, and that BER."""
    rates = [
        (x.link, nvml_model.decode_ber(x.ber["effective"]))
        for x in gpu.nvlinks
        if x.active and "effective" in x.ber
    ]
    return max(rates, key=lambda item: item[1]) if rates else None


def _list(items: list[int]) -> str:
    return ",".join(str(i) for i in items)


def _boot_id(ctx: CheckContext) -> str | None:
    try:
        return ctx.proc_path("sys", "kernel", "random", "boot_id").read_text().strip() or None
    except OSError:
        return None


def _nvlink_window(
    entry: Mapping[str, Any] | None, boot: str | None, now: float, max_window_s: float
) -> tuple[Mapping[str, Mapping[str, int]], str]:
    """The earlier reading to compare with, or ({}, why it is only a new baseline)."""
    from nodecheck.checks.fabric.counters import describe_age

    if not entry:
        return {}, "first reading"
    if entry.get("boot") and boot and entry["boot"] != boot:
        return {}, "node rebooted since last reading, new baseline"
    age = now - float(entry.get("t", now))
    if age > max_window_s:
        return {}, f"last reading {describe_age(age)} old, new baseline"
    return entry.get("links") or {}, ""


def _nvlink_rises(
    before: Mapping[str, Mapping[str, int]], now: Mapping[str, Mapping[str, int]]
) -> list[tuple[int, str, int]]:
    """(link, counter, increase) for every counter that went up. A counter that went down
    was reset (driver reload, reboot): its new value is the baseline, not a rise."""
    rises = []
    for link, counters in now.items():
        old = before.get(link, {})
        for counter, value in counters.items():
            if counter in old and value > old[counter]:
                rises.append((int(link), counter, value - old[counter]))
    return sorted(rises)
