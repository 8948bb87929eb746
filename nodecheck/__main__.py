import gc
import sys

# A nodecheck process lives for well under a second (a few more with a hung probe) and
# creates few reference cycles; the cyclic collector, run dozens of times while the
# modules load, cost ~15 ms of every job start on the benchmark machine
# (docs/performance.md). Probe children turn it back on for their own objects (runner).
gc.disable()

from nodecheck.entry.cli import main  # noqa: E402

sys.exit(main())
