"""Host checks from /proc and statvfs: memory, disk space, mounts, leftover processes, daemons.

All /proc reads go through `ctx.proc_path`, so tests point them at a built tree.
"""

# Importing a module registers its checks; this order is the order of `nodecheck list`.
from nodecheck.checks.host import mounts, procs, resources, services  # noqa: F401
