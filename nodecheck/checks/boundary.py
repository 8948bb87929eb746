"""The one line between what the node said and what nodecheck got wrong.

A FAIL, and so a drain, may rest only on what the hardware, the OS or a tool said: an
OSError that carries an errno, an NVML error code, a tool's exit status or output, a
deadline. Anything else raised while a check runs (an AttributeError of a half-imported
module, a KeyError of our own parsing, a TypeError) is nodecheck's own fault: an ERROR,
judged by `on_internal_error`, carrying its traceback for the log, never a FAIL and never
part of a drain reason.

Every place that catches exceptions on a probe's behalf goes through here: the runner for
a whole check, the bounded calls' threads (`failure_or_internal`), and the per-component
loops of the families (`per_component`: one GPU's, port's or path's bug becomes that
component's ERROR while the others are still judged).
"""

from __future__ import annotations

import os
import traceback as tb
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from nodecheck.core.results import CheckResult, Status

T = TypeVar("T")

_TRACEBACK_MAX = 4000  # the innermost frames are the ones that say where


def said_by_os(exc: BaseException) -> bool:
    """Whether `exc` is the kernel's answer (an errno), not an exception of our own code.
    An OSError made without an errno comes from Python code, not from a system call."""
    return isinstance(exc, OSError) and exc.errno is not None


def internal(check_id: str, exc: BaseException, component: str = "node") -> CheckResult:
    """nodecheck's own failure while checking `component`: an ERROR naming the exception
    and where it was raised; the whole traceback travels with the result for the log."""
    where = tb.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" at {os.path.basename(where.filename)}:{where.lineno}" if where else ""
    message = f"internal error: {type(exc).__name__}: {exc}{at}"
    text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    return CheckResult(
        check_id,
        Status.ERROR,
        message[:300],
        component,
        traceback=text[-_TRACEBACK_MAX:],
    )


def failure_or_internal(
    check_id: str,
    component: str,
    exc: BaseException,
    what: str,
    status: Status = Status.FAIL,
) -> CheckResult:
    """The result for an error a probe met on `component`: `status` (FAIL by default) with
    the OS's own words when the kernel said it ("statvfs: Input/output error"), else
    nodecheck's ERROR."""
    if not said_by_os(exc):
        return internal(check_id, exc, component)
    assert isinstance(exc, OSError)
    return CheckResult(check_id, status, f"{what}: {exc.strerror or exc}", component)


def per_component(
    check_id: str,
    items: Iterable[T],
    component_of: Callable[[T], str],
    judge: Callable[[T], Iterable[CheckResult]],
) -> Iterator[CheckResult]:
    """`judge` on every item; one that raises is that component's ERROR, and the rest are
    still judged (a real fault on gpu3 must still drain when gpu5's judgement has a bug)."""
    for item in items:
        try:
            found = list(judge(item))
        except Exception as exc:  # our code, whatever it was: never the component's fault
            found = [internal(check_id, exc, component_of(item))]
        yield from found
