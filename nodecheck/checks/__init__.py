"""Check families, one module each. Importing a family registers its checks."""

from __future__ import annotations

import importlib

FAMILIES = ("host", "fabric", "gpu", "deep", "trend")


def load_families() -> None:
    for family in FAMILIES:
        importlib.import_module(f"nodecheck.checks.{family}")
