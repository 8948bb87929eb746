"""Fabric checks from sysfs: InfiniBand/RoCE port state and rate, error counters between
runs (prolog->epilog of a job above all), ethernet/IPoIB netdevs, and an optional
allocation-wide reachability probe between the job's nodes.

Every path goes through `ctx.sys_path`, so a node class's `sysfs_root` points the checks at
a built tree. See docs/fabric.md for what each check reads and how it decides.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nodecheck.checks import lazy_module
from nodecheck.context import CheckContext
from nodecheck.fabric import counters as C
from nodecheck.progress import note
from nodecheck.registry import Option, check
from nodecheck.results import CheckResult, Status

S = lazy_module("nodecheck.fabric.sysfs")  # the sysfs readers: loaded in the probe child

LINK_LAYERS = ("", "InfiniBand", "Ethernet")


def _fail_or_error(failure: S.ReadFailure) -> Status:
    """An attribute we may not read is our problem; one the device cannot answer is its."""
    return Status.ERROR if failure.access else Status.FAIL


def _port_name(text: str) -> tuple[str, int] | None:
    dev, sep, port = text.partition("/")
    if not sep or not dev or not port.isdigit():
        return None
    return dev, int(port)


def _present_ports(sysfs_root: Path) -> list[tuple[str, int]]:
    found = []
    for dev in S.list_ib_devices(sysfs_root):
        info = S.read_ib_device(sysfs_root, dev)
        if info is not None:
            found.extend((dev, port) for port in info.ports)
    return found


# --------------------------------------------------------------------------------- ib.port


@check(
    "ib.port",
    summary="every expected HCA port ACTIVE / LinkUp with the expected link layer, rate, width",
    timeout_s=5.0,
    group="fabric",
    severity="high",
    remedy="check-cable",
    options={
        "ports": Option(list, [], "expected ports as device/port, e.g. mlx5_0/1", item=str),
        "count": Option(int, 0, "expected number of ports (of link_layer) when ports is empty"),
        "link_layer": Option(str, "", "expected link layer: InfiniBand, Ethernet or '' (any)"),
        "rate": Option(str, "", "expected rate as the kernel prints it: 400 Gb/sec (4X NDR)"),
        "rates": Option(dict, {}, "per-port expected rate, overrides rate", item=str),
    },
)
def ib_port(ctx: CheckContext) -> Iterator[CheckResult]:
    """A port that is DOWN/Polling (cable, transceiver, switch port), INIT/ARMED (no subnet
    manager), or trained at reduced width or speed (bad lane, dirty connector) slows or breaks
    every multi-node job. Fix: reseat/replace cable or transceiver, check the switch port and
    the SM (`ibstat`, `mlxlink -d mlx5_0 -m`), then resume the node."""
    opts = ctx.options
    link_layer: str = opts["link_layer"]
    if link_layer not in LINK_LAYERS:
        msg = f"option link_layer {link_layer!r} not one of InfiniBand, Ethernet, ''"
        yield CheckResult("ib.port", Status.ERROR, msg)
        return
    expected_rates: dict[str, S.Rate] = {}
    for port_name, text in [("*", opts["rate"]), *opts["rates"].items()]:
        if not text:
            continue
        parsed = S.parse_rate(text)
        if parsed is None:
            msg = f"option rate {text!r} not understood (write it as the kernel does: "
            msg += "400 Gb/sec (4X NDR))"
            yield CheckResult("ib.port", Status.ERROR, msg)
            return
        expected_rates[port_name] = parsed
    root = ctx.settings.sysfs_root
    wanted: list[str] = opts["ports"]
    if wanted:
        bad = [name for name in wanted if _port_name(name) is None]
        if bad:
            msg = f"option ports: {', '.join(bad)} not of the form device/port (mlx5_0/1)"
            yield CheckResult("ib.port", Status.ERROR, msg)
            return
        for name in wanted:
            dev, port = _port_name(name)  # type: ignore[misc]
            yield _judge_port(root, dev, port, expected_rates, link_layer, strict=True)
        return

    present = _present_ports(root)
    results = []
    matching = 0
    for dev, port in present:
        info = S.read_ib_port(root, dev, port)
        if info is None:
            continue
        layer = info.link_layer if isinstance(info.link_layer, str) else None
        if link_layer and layer is not None and layer != link_layer:
            continue
        matching += 1
        strict = opts["count"] > 0
        results.append(_judge_port(root, dev, port, expected_rates, link_layer, strict, info))
    kind = f"{link_layer} " if link_layer else ""
    if opts["count"] > 0 and matching < opts["count"]:
        names = ", ".join(f"{d}/{p}" for d, p in present) or "none"
        msg = f"{matching} of {opts['count']} expected {kind}ports present ({names})"
        values = {"present": matching, "expected": opts["count"]}
        yield CheckResult(
            "ib.port", Status.FAIL, msg[:200], component="ib", values=values,
            severity="critical", remedy="reboot",
        )  # fmt: skip
    elif not results:
        yield CheckResult("ib.port", Status.SKIP, f"no {kind}HCA ports present, none expected")
    yield from results


def _judge_port(
    root: Path,
    dev: str,
    port: int,
    expected_rates: dict[str, S.Rate],
    link_layer: str,
    strict: bool,
    info: S.IbPort | None = None,
) -> CheckResult:
    """One port's verdict. strict: the port is expected (FAIL); else a present port nobody
    declared, whose problems are only a WARN (it may be uncabled on purpose)."""
    name = f"{dev}/{port}"

    def result(
        status: Status,
        message: str,
        values: dict[str, Any] | None = None,
        severity: str = "",
        remedy: str = "",
    ) -> CheckResult:
        if status is Status.FAIL and not strict:
            status = Status.WARN
        return CheckResult(
            "ib.port", status, message, component=name, values=values or {},
            severity=severity, remedy=remedy,
        )  # fmt: skip

    if info is None:
        if not (S.ib_class_dir(root) / dev).exists():
            # Fell off the bus or the driver did not probe it: reboot first, then RMA.
            return result(Status.FAIL, f"HCA {dev} missing", severity="critical", remedy="reboot")
        info = S.read_ib_port(root, dev, port)
        if info is None:
            msg = f"port {port} missing on {dev}"
            return result(Status.FAIL, msg, severity="critical", remedy="reboot")
    values = _port_values(root, info)
    for attr in ("state", "phys_state"):
        got = getattr(info, attr)
        if isinstance(got, S.ReadFailure):
            msg = f"cannot read {attr}: {got}"
            return result(_fail_or_error(got), msg, values, remedy="reboot")
        if isinstance(got, str):
            return result(Status.ERROR, f"{attr} {got!r} not understood", values)
    state, phys = info.state, info.phys_state
    assert isinstance(state, S.Coded) and isinstance(phys, S.Coded)
    if state.code != S.STATE_ACTIVE or phys.code != S.PHYS_LINKUP:
        msg = f"state {state}, phys_state {phys} (expected 4: ACTIVE, 5: LinkUp)"
        # Link trained but not activated (INIT/ARMED): the subnet manager's side, not a cable.
        remedy = "admin" if phys.code == S.PHYS_LINKUP else ""
        return result(Status.FAIL, msg, values, remedy=remedy)
    layer = info.link_layer
    if isinstance(layer, S.ReadFailure):
        return result(_fail_or_error(layer), f"cannot read link_layer: {layer}", values)
    if link_layer and layer != link_layer:
        msg = f"link layer {layer}, expected {link_layer}"
        return result(Status.FAIL, msg, values, remedy="admin")
    rate = info.rate
    if isinstance(rate, S.ReadFailure):
        return result(_fail_or_error(rate), f"cannot read rate: {rate}", values)
    if not isinstance(rate, S.Rate):
        return result(Status.ERROR, f"rate {rate!r} not understood", values)
    want = expected_rates.get(name) or expected_rates.get("*")
    if want is None or rate == want:
        return result(Status.PASS, f"{state.name} {phys.name}, {rate}", values)
    if rate.gbps < want.gbps:
        msg = f"rate {rate} below expected {want}"
        return result(Status.FAIL, msg, values, severity="medium")
    if rate.width < want.width:
        msg = f"width {rate.width}X below expected {want.width}X: rate {rate}, expected {want}"
        return result(Status.FAIL, msg, values, severity="medium")
    return result(Status.WARN, f"rate {rate} differs from expected {want}", values)


def _port_values(root: Path, info: S.IbPort) -> dict[str, Any]:
    def show(value: Any) -> Any:
        return None if value is None else str(value)

    values: dict[str, Any] = {
        "state": show(info.state),
        "phys_state": show(info.phys_state),
        "rate": show(info.rate),
        "link_layer": show(info.link_layer),
        "lid": show(info.lid),
    }
    dev = S.read_ib_device(root, info.device)
    if dev is not None:
        values.update(
            fw_ver=dev.fw_ver, board_id=dev.board_id, node_guid=dev.node_guid,
            pci=dev.pci_address, numa_node=dev.numa_node,
        )  # fmt: skip
    return values


# ----------------------------------------------------------------------------- ib.counters

STATE_VERSION = 1
MAX_JOB_READINGS = 64
JOB_READING_MAX_AGE_S = 30 * 86400


@check(
    "ib.counters",
    summary="HCA port error counters not rising past thresholds between runs (prolog->epilog)",
    timeout_s=8.0,
    group="fabric",
    severity="medium",
    remedy="check-cable",
    options={
        "ports": Option(list, [], "ports to watch as device/port (empty: all present)", item=str),
        "counters": Option(list, C.DEFAULT_COUNTERS, "counters/* files to watch", item=str),
        "hw_counters": Option(
            list, C.DEFAULT_HW_COUNTERS, "hw_counters/* files to watch where present", item=str
        ),
        "fail_rise": Option(
            dict,
            C.DEFAULT_FAIL_RISE,
            "counter -> rise within one window above which FAIL",
            item=int,
        ),
        "warn_rise": Option(
            dict,
            C.DEFAULT_WARN_RISE,
            "counter -> rise within one window above which WARN",
            item=int,
        ),
        "max_window_s": Option(
            (int, float), 86400, "a run window older than this is only a new baseline"
        ),
    },
)
def ib_counters(ctx: CheckContext) -> Iterator[CheckResult]:
    """Link errors that pile up during a job (symbol errors, link recoveries, link downs)
    mean a marginal cable, transceiver or port: collectives slow down or fail. Fix: check
    the link with `mlxlink -m -c` / the switch side, replace the cable, clear the counters
    (`perfquery -x -R`) and resume."""
    opts = ctx.options
    root = ctx.settings.sysfs_root
    if opts["ports"]:
        bad = [name for name in opts["ports"] if _port_name(name) is None]
        if bad:
            msg = f"option ports: {', '.join(bad)} not of the form device/port (mlx5_0/1)"
            yield CheckResult("ib.counters", Status.ERROR, msg)
            return
        ports = [_port_name(name) for name in opts["ports"]]
    else:
        ports = _present_ports(root)
    readings: dict[str, dict[str, Any]] = {}
    guids: dict[str, str | None] = {}
    for dev, port in ports:  # type: ignore[misc]
        path = S.ib_class_dir(root) / dev / "ports" / str(port)
        if not path.is_dir():
            continue  # a missing port is ib.port's verdict
        name = f"{dev}/{port}"
        note(f"reading {name} counters")
        got: dict[str, Any] = S.read_port_counters(path, list(opts["counters"]), "counters")
        hw = S.read_port_counters(path, list(opts["hw_counters"]), "hw_counters")
        got.update({k: v for k, v in hw.items() if k not in got})
        readings[name] = got
        guid = S.read_attr(S.ib_class_dir(root) / dev / "node_guid")
        guids[name] = guid if isinstance(guid, str) else None
    if not readings:
        yield CheckResult("ib.counters", Status.SKIP, "no HCA ports present")
        return
    boot_id = _boot_id(ctx)
    now = time.time()
    note("updating counter state")
    try:
        results = _judge_and_store(ctx, readings, guids, boot_id, now)
    except Exception as exc:  # state unusable: still report what the reads showed
        msg = f"counter state unavailable ({type(exc).__name__}: {exc}); nothing compared"
        yield CheckResult("ib.counters", Status.ERROR, msg[:240], component="state")
        results = []
        for name, reading in readings.items():
            judged = C.judge_port(reading, None, {}, {})
            results.append(
                _counter_result(name, judged, "baseline", None, ctx, 0.0, "not compared")
            )
    yield from results


def _boot_id(ctx: CheckContext) -> str | None:
    raw = S.read_attr(ctx.proc_path("sys", "kernel", "random", "boot_id"))
    return raw if isinstance(raw, str) and raw else None


# Waiting for the state lock must end well inside the group's deadline: a state file held
# by someone else is nodecheck's problem (ERROR), never a "probe hung" FAIL of the fabric.
STATE_BUSY_MS = 3000
STATE_OPEN_ATTEMPTS = 5


@contextlib.contextmanager
def _open_state(state_dir: Path) -> Iterator[Any]:
    """open_state, retried briefly: several probe processes creating a fresh state file at
    once can get SQLITE_BUSY at once (switching to WAL does not wait for the busy handler)."""
    from nodecheck.state import StateError, open_state

    with contextlib.ExitStack() as stack:
        for attempt in range(STATE_OPEN_ATTEMPTS):
            try:
                store = stack.enter_context(open_state(state_dir))
                break
            except StateError as exc:
                if "locked" not in str(exc) or attempt == STATE_OPEN_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        yield store


@contextlib.contextmanager
def _immediate(store: Any) -> Iterator[None]:
    """Serialise read-modify-write of one key between concurrent runs (shared nodes)."""
    conn = getattr(store, "conn", None)
    if conn is None:
        yield
        return
    conn.execute(f"PRAGMA busy_timeout = {STATE_BUSY_MS}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    if conn.in_transaction:
        conn.commit()


def _judge_and_store(
    ctx: CheckContext,
    readings: dict[str, dict[str, Any]],
    guids: dict[str, str | None],
    boot_id: str | None,
    now: float,
) -> list[CheckResult]:
    opts = ctx.options
    key = f"ib.counters/{ctx.node}"
    job_id = ctx.job.job_id
    results = []
    with _open_state(ctx.settings.state_dir) as store, _immediate(store):
        blob = store.get_json(key) or {}
        if blob.get("v") != STATE_VERSION:
            blob = {"v": STATE_VERSION, "ports": {}, "jobs": {}}
        job_reading = None
        if ctx.phase == "epilog" and job_id:
            job_reading = blob["jobs"].pop(job_id, None)
        new_entries = {}
        for name, reading in readings.items():
            window, previous, since, why = _pick_window(
                blob, job_reading, name, guids[name], boot_id, now, opts["max_window_s"]
            )
            judged = C.judge_port(
                reading, previous, dict(opts["fail_rise"]), dict(opts["warn_rise"])
            )
            entry = {"t": now, "boot": boot_id, "guid": guids[name], "c": judged.stored}
            new_entries[name] = entry
            blob["ports"][name] = entry
            results.append(_counter_result(name, judged, window, since, ctx, now, why))
        if ctx.phase == "prolog" and job_id:
            blob["jobs"][job_id] = {"t": now, "boot": boot_id, "ports": new_entries}
        _prune_jobs(blob["jobs"], now)
        store.put_json(key, blob)
    return results


def _pick_window(
    blob: dict[str, Any],
    job_reading: dict[str, Any] | None,
    name: str,
    guid: str | None,
    boot_id: str | None,
    now: float,
    max_window_s: float,
) -> tuple[str, dict[str, int] | None, float | None, str]:
    """(window kind, previous counters or None, previous time, why a baseline)."""
    candidates = []
    if job_reading is not None and name in job_reading.get("ports", {}):
        candidates.append(("job", job_reading["ports"][name]))
    if name in blob["ports"]:
        candidates.append(("run", blob["ports"][name]))
    if not candidates:
        return "baseline", None, None, "baseline recorded"
    kind, prev = candidates[0]
    if prev.get("guid") and guid and prev["guid"] != guid:
        return "baseline", None, prev.get("t"), f"HCA changed (GUID {guid}), new baseline"
    if prev.get("boot") and boot_id and prev["boot"] != boot_id:
        return "baseline", None, prev.get("t"), "node rebooted since last reading, new baseline"
    age = now - float(prev.get("t", now))
    if kind == "run" and age > max_window_s:
        why = f"last reading {C.describe_age(age)} old, new baseline"
        return "baseline", None, prev.get("t"), why
    return kind, dict(prev.get("c", {})), prev.get("t"), ""


def _prune_jobs(jobs: dict[str, Any], now: float) -> None:
    """Drop prolog readings whose epilog never came (node crashed, nodecheck disabled)."""
    for job in [j for j, r in jobs.items() if now - float(r.get("t", 0)) > JOB_READING_MAX_AGE_S]:
        del jobs[job]
    if len(jobs) > MAX_JOB_READINGS:
        for job in sorted(jobs, key=lambda j: float(jobs[j].get("t", 0)))[:-MAX_JOB_READINGS]:
            del jobs[job]


def _counter_result(
    name: str,
    judged: C.PortJudgement,
    window: str,
    since: float | None,
    ctx: CheckContext,
    now: float,
    why: str,
) -> CheckResult:
    if window == "job":
        span = f"during job {ctx.job.job_id}"
    elif since is not None:
        span = f"since last check {C.describe_age(max(0.0, now - since))} ago"
    else:
        span = ""
    parts = []
    if judged.unreadable:
        items = [f"{k} ({v})" for k, v in judged.unreadable.items()]
        parts.append("unreadable: " + ", ".join(items[:2]) + (" ..." if len(items) > 2 else ""))
    if judged.unparsable:
        items = [f"{k}={v[:20]!r}" for k, v in judged.unparsable.items()]
        parts.append("not understood: " + ", ".join(items[:2]))
    if judged.flagged:
        rises = ", ".join(f"{k} +{rise}" for _, k, rise in judged.flagged[:4])
        parts.append(f"{rises} {span}".strip())
    if judged.saturated:
        parts.append(f"{', '.join(judged.saturated)} saturated (clear counters to see new errors)")
    if judged.reset:
        parts.append(f"counter reset ({', '.join(judged.reset[:3])}), new baseline")
    if why:
        parts.append(why)
    if not parts:
        parts.append(f"no rise above thresholds {span}".strip())
    values: dict[str, Any] = {
        "window": window,
        "counters": judged.stored,
        "rise": {k: v for k, v in judged.deltas.items() if v},
    }
    if since is not None and window != "baseline":
        values["window_s"] = round(now - since, 1)
    for label in ("reset", "saturated", "absent"):
        if getattr(judged, label):
            values[label] = getattr(judged, label)
    if judged.unreadable:
        values["unreadable"] = {k: str(v) for k, v in judged.unreadable.items()}
    severity, remedy = ("high", "reboot") if judged.unreadable else ("", "")
    return CheckResult(
        "ib.counters", judged.status, "; ".join(parts)[:200], component=name, values=values,
        severity=severity, remedy=remedy,
    )  # fmt: skip


# -------------------------------------------------------------------------------- net.link


@check(
    "net.link",
    summary="expected netdevs (ethernet, RoCE, IPoIB) up, with carrier, at the expected speed",
    timeout_s=3.0,
    group="fabric",
    severity="high",
    remedy="check-cable",
    options={
        "devices": Option(list, [], 'netdevs that must be up, e.g. ["ib0", "eth2"]', item=str),
        "speed": Option(int, 0, "expected speed in Mb/s (0: not checked), e.g. 200000"),
        "speeds": Option(dict, {}, "per-device expected speed in Mb/s, overrides speed", item=int),
        "mtu": Option(int, 0, "expected MTU (0: not checked)"),
    },
)
def net_link(ctx: CheckContext) -> Iterator[CheckResult]:
    """A storage/RoCE/IPoIB interface that is down, without carrier or at a lower speed
    breaks or slows jobs (storage, NCCL over RoCE, MPI bootstrap). Fix: cable/transceiver,
    switch port, `ip link set DEV up`, driver messages in `dmesg`."""
    devices: list[str] = ctx.options["devices"]
    if not devices:
        yield CheckResult("net.link", Status.SKIP, "no netdevs configured")
        return
    for name in devices:
        yield _judge_netdev(ctx, name)


def _judge_netdev(ctx: CheckContext, name: str) -> CheckResult:
    def result(status: Status, message: str, values: dict[str, Any] | None = None) -> CheckResult:
        return CheckResult("net.link", status, message, component=name, values=values or {})

    dev = S.read_netdev(ctx.settings.sysfs_root, name)
    if dev is None:
        return result(Status.FAIL, "netdev missing")
    values = {
        k: (v if isinstance(v, int | str) else None)
        for k, v in (("operstate", dev.operstate), ("carrier", dev.carrier),
                     ("speed", dev.speed), ("mtu", dev.mtu))
    }  # fmt: skip
    if isinstance(dev.operstate, S.ReadFailure):
        return result(_fail_or_error(dev.operstate), f"cannot read operstate: {dev.operstate}")
    carrier = dev.carrier if isinstance(dev.carrier, int) else None
    # "unknown": the driver does not track operstate (Documentation/networking/operstates);
    # then carrier decides.
    if dev.operstate != "up" and not (dev.operstate == "unknown" and carrier == 1):
        shown = "unreadable (not running)" if carrier is None else str(carrier)
        return result(Status.FAIL, f"operstate {dev.operstate}, carrier {shown}", values)
    if carrier != 1:
        if isinstance(dev.carrier, S.ReadFailure) and dev.carrier.access:
            return result(Status.ERROR, f"cannot read carrier: {dev.carrier}", values)
        return result(Status.FAIL, f"no carrier (operstate {dev.operstate})", values)
    want_speed = ctx.options["speeds"].get(name, ctx.options["speed"])
    speed = dev.speed if isinstance(dev.speed, int) else None
    if want_speed:
        if speed is None or speed < 0:
            return result(Status.WARN, f"speed unknown, expected {want_speed} Mb/s", values)
        if speed < want_speed:
            msg = f"speed {speed} Mb/s below expected {want_speed} Mb/s"
            return CheckResult(
                "net.link", Status.FAIL, msg, component=name, values=values, severity="medium"
            )
        if speed > want_speed:
            msg = f"speed {speed} Mb/s differs from expected {want_speed} Mb/s"
            return result(Status.WARN, msg, values)
    want_mtu = ctx.options["mtu"]
    if want_mtu and isinstance(dev.mtu, int) and dev.mtu != want_mtu:
        msg = f"mtu {dev.mtu}, expected {want_mtu}"
        return CheckResult(
            "net.link", Status.FAIL, msg, component=name, values=values, remedy="admin"
        )
    shown_speed = f"{speed} Mb/s" if speed is not None and speed >= 0 else "speed unknown"
    return result(Status.PASS, f"up, {shown_speed}", values)


# ---------------------------------------------------------------------------- fabric.peers


@check(
    "fabric.peers",
    summary="multi-node jobs: this node reaches the job's other nodes over the fabric (opt-in)",
    phases=("prolog",),
    timeout_s=15.0,
    enabled_by_default=False,
    severity="high",
    remedy="admin",
    options={
        "address_template": Option(
            str, "{node}", "a node's fabric address or name: {node}, {num} (e.g. 10.10.0.{num})"
        ),
        "addresses": Option(dict, {}, "node -> fabric address, overrides the template", item=str),
        "control_template": Option(
            str, "", "a node's control-network address ('' : none); proves a peer is up"
        ),
        "control_addresses": Option(dict, {}, "node -> control address", item=str),
        "port": Option(int, 18800, "TCP port of the probe (open it between the nodes)"),
        "deadline_s": Option((int, float), 5.0, "the probe never runs longer than this"),
        "resolve_timeout_s": Option((int, float), 1.0, "name lookups give up after this"),
        "max_peers": Option(int, 8, "probe at most this many peers (ring neighbours)"),
        "fail_min_peers": Option(
            int, 2, "FAIL only if this many silent peers are known up on the control network"
        ),
    },
)
def fabric_peers(ctx: CheckContext) -> Iterator[CheckResult]:
    """The job's nodes cannot talk over the fabric: a dead HCA path, wrong IPoIB/RoCE
    address, or a partition (PKey) problem. This node FAILs only when it reaches none of its
    peers while they are known up on the control network; a silent single peer is a WARN
    naming it. Fix: `ibstat`, `ip addr` on the fabric interface, the SM's partition config."""
    from nodecheck.fabric import peers as P

    opts = ctx.options
    problems = []
    if not 0 < opts["port"] < 65536:
        problems.append("port must be 1-65535")
    if not 0 < opts["deadline_s"] <= 60:
        problems.append("deadline_s must be in (0, 60]")
    if not 0 < opts["resolve_timeout_s"] <= 10:
        problems.append("resolve_timeout_s must be in (0, 10]")
    if opts["max_peers"] < 1:
        problems.append("max_peers must be at least 1")
    if problems:
        yield CheckResult("fabric.peers", Status.ERROR, "bad options: " + "; ".join(problems))
        return
    if not ctx.job.nodelist:
        yield CheckResult("fabric.peers", Status.SKIP, "no job node list (SLURM_NODELIST)")
        return
    try:
        nodes = P.expand_nodelist(ctx.job.nodelist)
    except ValueError as exc:
        yield CheckResult("fabric.peers", Status.ERROR, f"node list not understood: {exc}")
        return
    if len(nodes) < 2:
        yield CheckResult("fabric.peers", Status.SKIP, "single-node job")
        return
    peers = P.choose_peers(nodes, ctx.node, opts["max_peers"])
    if not peers:
        yield CheckResult("fabric.peers", Status.SKIP, f"{ctx.node} not in the job's node list")
        return
    try:
        own_host = P.node_address(ctx.node, opts["address_template"], opts["addresses"])
        hosts = {p: P.node_address(p, opts["address_template"], opts["addresses"]) for p in peers}
        control_hosts = {}
        if opts["control_template"] or opts["control_addresses"]:
            template = opts["control_template"] or "{node}"
            control_hosts = {
                p: P.node_address(p, template, opts["control_addresses"]) for p in peers
            }
    except ValueError as exc:
        yield CheckResult("fabric.peers", Status.ERROR, f"address option: {exc}")
        return
    note(f"resolving {len(hosts) + len(control_hosts) + 1} addresses")
    resolved = P.resolve_all(
        [own_host, *hosts.values(), *control_hosts.values()], opts["resolve_timeout_s"]
    )
    own = resolved[own_host]
    if own is None:
        msg = f"cannot resolve this node's fabric address {own_host!r}"
        yield CheckResult("fabric.peers", Status.ERROR, msg, component=ctx.node)
        return
    note(f"probing {len(peers)} peers on port {opts['port']} for up to {opts['deadline_s']}s")
    report = P.probe(
        ctx.node,
        ctx.job.job_id or "-",
        own,
        {p: resolved[h] for p, h in hosts.items()},
        opts["port"],
        float(opts["deadline_s"]),
        {p: resolved[h] for p, h in control_hosts.items()} or None,
    )
    verdict = P.judge(report, own[1], opts["fail_min_peers"], bool(control_hosts))
    yield CheckResult(
        "fabric.peers",
        Status[verdict.status],
        verdict.message[:200],
        component=own[1],
        values=verdict.values,
    )
