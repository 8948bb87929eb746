"""Calls into pynvml by name, for the collector's modules (real, nvlink, fields).

It sits below all three so that they share it without importing each other: real.py drives
the collection, nvlink.py and fields.py only ever receive a Caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nodecheck.core.progress import note
from nodecheck.probes.nvml.model import FUNCTION_NOT_FOUND, NvmlError


class Caller:
    """Calls pynvml functions by name, turning NVMLError into NvmlError data."""

    def __init__(self, pynvml: Any) -> None:
        self.nv = pynvml

    def __call__(self, fn_name: str, *args: Any, where: str = "") -> tuple[Any, NvmlError | None]:
        note(f"{fn_name} {where}".strip())
        fn = getattr(self.nv, fn_name, None)
        if fn is None:  # this pynvml predates the call
            return None, NvmlError(FUNCTION_NOT_FOUND)
        try:
            return fn(*args), None
        except self.nv.NVMLError as exc:
            return None, NvmlError(int(exc.value))
        except getattr(self.nv, "NVMLLibraryMismatchError", ()):
            # pynvml's unversioned wrappers turn a missing symbol into this instead
            return None, NvmlError(FUNCTION_NOT_FOUND)

    def first(
        self, names: Iterable[str], *args: Any, where: str = ""
    ) -> tuple[Any, NvmlError | None]:
        """Try newer then older names of one call, moving on only when one is missing."""
        value, err = None, NvmlError(FUNCTION_NOT_FOUND)
        for name in names:
            value, err = self(name, *args, where=where)
            if err is None or err.code != FUNCTION_NOT_FOUND:
                break
        return value, err
