"""What the fabric checks share: the lazily bound sysfs readers and the list of HCA ports."""

from __future__ import annotations

from pathlib import Path

from nodecheck.checks.registry import Option
from nodecheck.core.results import Status
from nodecheck.probes.fabric import sysfs

LINK_LAYERS = ("", "InfiniBand", "Ethernet")

# How a job's nodes are found on the fabric (probes/fabric/peers.node_address, then
# resolve_all): fabric.peers and fabric.preflight take the same three options, so a site
# configures both alike. Each check spreads them into its own options.
ADDRESS_OPTIONS: dict[str, Option] = {
    "address_template": Option(
        str, "{node}", "a node's fabric address or name: {node}, {num} (e.g. 10.10.0.{num})"
    ),
    "addresses": Option(dict, {}, "node -> fabric address, overrides the template", item=str),
    "resolve_timeout_s": Option((int, float), 1.0, "name lookups give up after this"),
}


def _fail_or_error(failure: sysfs.ReadFailure) -> Status:
    """An attribute we may not read is our problem; one the device cannot answer is its."""
    return Status.ERROR if failure.access else Status.FAIL


def _port_name(text: str) -> tuple[str, int] | None:
    dev, sep, port = text.partition("/")
    if not sep or not dev or not port.isdigit():
        return None
    return dev, int(port)


def _present_ports(sysfs_root: Path) -> list[tuple[str, int]]:
    found = []
    for dev in sysfs.list_ib_devices(sysfs_root):
        info = sysfs.read_ib_device(sysfs_root, dev)
        if info is not None:
            found.extend((dev, port) for port in info.ports)
    return found
