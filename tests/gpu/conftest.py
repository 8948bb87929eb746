"""Real-hardware GPU tests: every test here is marked `gpu` and needs a working NVML."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# Share the unit tests' small builders (make_ctx, options_of).
sys.path.insert(0, str(HERE.parent / "unit"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu)
