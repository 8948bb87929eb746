"""net.link: expected ethernet / IPoIB netdevs up at the expected speed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from nodecheck.checks import boundary
from nodecheck.checks.context import CheckContext
from nodecheck.checks.fabric.common import _fail_or_error, sysfs
from nodecheck.checks.registry import Option, check
from nodecheck.core.results import CheckResult, Status


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
    yield from boundary.per_component(
        "net.link", devices, str, lambda name: [_judge_netdev(ctx, name)]
    )


def _judge_netdev(ctx: CheckContext, name: str) -> CheckResult:
    def result(status: Status, message: str, values: dict[str, Any] | None = None) -> CheckResult:
        return CheckResult("net.link", status, message, component=name, values=values or {})

    dev = sysfs.read_netdev(ctx.settings.sysfs_root, name)
    if dev is None:
        return result(Status.FAIL, "netdev missing")
    values = {
        k: (v if isinstance(v, int | str) else None)
        for k, v in (("operstate", dev.operstate), ("carrier", dev.carrier),
                     ("speed", dev.speed), ("mtu", dev.mtu))
    }  # fmt: skip
    if isinstance(dev.operstate, sysfs.ReadFailure):
        return result(_fail_or_error(dev.operstate), f"cannot read operstate: {dev.operstate}")
    carrier = dev.carrier if isinstance(dev.carrier, int) else None
    # "unknown": the driver does not track operstate (Documentation/networking/operstates);
    # then carrier decides.
    if dev.operstate != "up" and not (dev.operstate == "unknown" and carrier == 1):
        shown = "unreadable (not running)" if carrier is None else str(carrier)
        return result(Status.FAIL, f"operstate {dev.operstate}, carrier {shown}", values)
    if carrier != 1:
        if isinstance(dev.carrier, sysfs.ReadFailure) and dev.carrier.access:
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
