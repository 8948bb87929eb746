"""GPU checks through NVML (the adapter in `nodecheck.probes.nvml`) and the kernel log (XIDs).

Every NVML-backed check is in group "gpu": they run one after another in one isolated
child, which takes one NVML snapshot (cached per process) and judges it. A hung NVML call
is killed with the child and reported by the runner with the call it hung in.

Conventions: a GPU that NVML cannot reach (NVML_ERROR_GPU_IS_LOST...) FAILs every check
that looks at it; a field NVML does not support on this part is a SKIP for that GPU; an
NVML error that means nodecheck itself is at fault (no permission, bad argument) is an
ERROR. When NVML cannot start at all, gpu.count alone decides whether that is a failure
(the node class expects GPUs) or fine (it expects none); the others SKIP.
"""

# Importing a module registers its checks; this order is the order of `nodecheck list`.
from nodecheck.checks.gpu import idle, inventory, links, memory, nvswitch, power, settings, xid  # noqa: F401
