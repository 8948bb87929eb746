"""What the host checks share: their probe group and the bounded-call helpers."""

from __future__ import annotations

# The checks import nodecheck.probes.host (psutil, and the socket module it loads) and
# nodecheck.core.bounded inside their functions: in the probe process, on its own thread,
# before any bounded call starts threads. Never lazily on first attribute access: a module
# that a second thread reaches while the first still executes it is half-made (Python
# 3.11's importlib LazyLoader is not thread-safe), and that would be our bug reported as
# the disk's failure (tests/unit/test_boundary.py).

GIB = 1024**3
# mem, disk, mounts and services share one probe child (one fork instead of four): their
# reads either cannot block (/proc/meminfo, /proc/PID/stat) or run under a deadline of
# their own (statvfs and mount probes, nodecheck.core.bounded). host.procs stays alone: it
# waits out its grace period for leftovers to exit.
GROUP = "host"
