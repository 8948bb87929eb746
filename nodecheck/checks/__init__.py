"""Check families, one module each. Importing a family registers its checks."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

FAMILIES = ("host", "fabric", "gpu", "deep")


def lazy_module(name: str) -> ModuleType:
    """`name`, imported on first attribute access instead of now.

    Every family is imported by the prolog's parent process (importing registers the
    checks), but a family's data model is only needed where its checks run: in the forked
    probe child. A data model bound with this is built there, in parallel with the other
    probes, instead of on the parent's critical path (docs/performance.md).
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
