"""ib.port: every expected HCA port ACTIVE / LinkUp, at the expected rate and width."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nodecheck.checks import boundary
from nodecheck.checks.context import CheckContext
from nodecheck.checks.fabric.common import (
    LINK_LAYERS,
    _fail_or_error,
    _port_name,
    _present_ports,
    sysfs,
)
from nodecheck.checks.registry import Option, check
from nodecheck.core.results import CheckResult, Status


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
        "link_layer": Option(
            str, "", "expected link layer: InfiniBand, Ethernet or '' (any)", choices=LINK_LAYERS
        ),
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
    expected_rates: dict[str, sysfs.Rate] = {}
    for port_name, text in [("*", opts["rate"]), *opts["rates"].items()]:
        if not text:
            continue
        parsed = sysfs.parse_rate(text)
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

        def expected(name: str) -> list[CheckResult]:
            dev, port = _port_name(name)  # type: ignore[misc]
            return [_judge_port(root, dev, port, expected_rates, link_layer, strict=True)]

        yield from boundary.per_component("ib.port", wanted, str, expected)
        return

    present = _present_ports(root)
    matching = 0

    def found(where: tuple[str, int]) -> list[CheckResult]:
        nonlocal matching
        dev, port = where
        info = sysfs.read_ib_port(root, dev, port)
        if info is None:
            return []
        layer = info.link_layer if isinstance(info.link_layer, str) else None
        if link_layer and layer is not None and layer != link_layer:
            return []
        matching += 1
        strict = opts["count"] > 0
        return [_judge_port(root, dev, port, expected_rates, link_layer, strict, info)]

    results = list(boundary.per_component("ib.port", present, lambda w: f"{w[0]}/{w[1]}", found))
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
    expected_rates: dict[str, sysfs.Rate],
    link_layer: str,
    strict: bool,
    info: sysfs.IbPort | None = None,
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
        if not (sysfs.ib_class_dir(root) / dev).exists():
            # Fell off the bus or the driver did not probe it: reboot first, then RMA.
            return result(Status.FAIL, f"HCA {dev} missing", severity="critical", remedy="reboot")
        info = sysfs.read_ib_port(root, dev, port)
        if info is None:
            msg = f"port {port} missing on {dev}"
            return result(Status.FAIL, msg, severity="critical", remedy="reboot")
    values = _port_values(root, info)
    for attr in ("state", "phys_state"):
        got = getattr(info, attr)
        if isinstance(got, sysfs.ReadFailure):
            msg = f"cannot read {attr}: {got}"
            return result(_fail_or_error(got), msg, values, remedy="reboot")
        if isinstance(got, str):
            return result(Status.ERROR, f"{attr} {got!r} not understood", values)
    state, phys = info.state, info.phys_state
    assert isinstance(state, sysfs.Coded) and isinstance(phys, sysfs.Coded)
    if state.code != sysfs.STATE_ACTIVE or phys.code != sysfs.PHYS_LINKUP:
        msg = f"state {state}, phys_state {phys} (expected 4: ACTIVE, 5: LinkUp)"
        # Link trained but not activated (INIT/ARMED): the subnet manager's side, not a cable.
        remedy = "admin" if phys.code == sysfs.PHYS_LINKUP else ""
        return result(Status.FAIL, msg, values, remedy=remedy)
    layer = info.link_layer
    if isinstance(layer, sysfs.ReadFailure):
        return result(_fail_or_error(layer), f"cannot read link_layer: {layer}", values)
    if link_layer and layer != link_layer:
        msg = f"link layer {layer}, expected {link_layer}"
        return result(Status.FAIL, msg, values, remedy="admin")
    rate = info.rate
    if isinstance(rate, sysfs.ReadFailure):
        return result(_fail_or_error(rate), f"cannot read rate: {rate}", values)
    if not isinstance(rate, sysfs.Rate):
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


def _port_values(root: Path, info: sysfs.IbPort) -> dict[str, Any]:
    def show(value: Any) -> Any:
        return None if value is None else str(value)

    values: dict[str, Any] = {
        "state": show(info.state),
        "phys_state": show(info.phys_state),
        "rate": show(info.rate),
        "link_layer": show(info.link_layer),
        "lid": show(info.lid),
    }
    dev = sysfs.read_ib_device(root, info.device)
    if dev is not None:
        values.update(
            fw_ver=dev.fw_ver, board_id=dev.board_id, node_guid=dev.node_guid,
            pci=dev.pci_address, numa_node=dev.numa_node,
        )  # fmt: skip
    return values
