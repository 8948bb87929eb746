"""The deep tier: active checks that measure what GPUs and the fabric deliver (docs/deep.md).

The check modules (fabric, gpu, p2p, sdc, tools) register their checks, all with tier "deep":
they never run in the prolog, epilog or health phases unless a site configures them there,
and `nodecheck run --tier deep` selects them. `judge` and `expected` are plain data and
pure functions, importable without registering anything; `common` holds what the GPU checks
share (which devices may be measured, the reference figures).
"""

# Importing a module registers its checks; this order is the order of `nodecheck list`.
from nodecheck.checks.deep import fabric, gpu, p2p, sdc, tools  # noqa: F401
