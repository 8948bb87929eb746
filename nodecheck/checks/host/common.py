"""What the host checks share: their probe group and the bounded-call helpers."""

from __future__ import annotations

from nodecheck.checks import lazy_module

bounded = lazy_module("nodecheck.run.bounded")  # threads for calls that may hang; child only
# psutil (and the socket module it loads) only where a host check runs: the probe child.
host = lazy_module("nodecheck.probes.host")

GIB = 1024**3
# mem, disk, mounts and services share one probe child (one fork instead of four): their
# reads either cannot block (/proc/meminfo, /proc/PID/stat) or run under a deadline of
# their own (statvfs and mount probes, nodecheck.run.bounded). host.procs stays alone: it
# waits out its grace period for leftovers to exit.
GROUP = "host"
