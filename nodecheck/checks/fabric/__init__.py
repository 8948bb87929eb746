"""Fabric checks from sysfs: InfiniBand/RoCE port state and rate, error counters between
runs (prolog->epilog of a job above all), ethernet/IPoIB netdevs, and an optional
allocation-wide reachability probe between the job's nodes.

Every path goes through `ctx.sys_path`, so a node class's `sysfs_root` points the checks at
a built tree. See docs/fabric.md for what each check reads and how it decides.
"""

# Importing a module registers its checks; this order is the order of `nodecheck list`.
from nodecheck.checks.fabric import counters, netdev, peers, ports, preflight  # noqa: F401
