"""Check families, one module each. Importing a family registers its checks."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

FAMILIES = ("host", "fabric", "gpu", "deep")


def lazy_module(name: str) -> ModuleType:
    """`name`, imported on first attribute access instead of now.

    Every family is imported by every hook (importing registers the checks). The deep
    family's judgement (statistics under it) and the host family's psutil are needed only
    in the probe child that runs those checks; bound with this, the hook's parent never loads
    them. The deep judgement measured 3-11 ms of every hook's imports (docs/performance.md,
    "This round"); the GPU and fabric families import their probes plainly.
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module named {name!r}")
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


def load_families() -> None:
    for family in FAMILIES:
        importlib.import_module(f"nodecheck.checks.{family}")
