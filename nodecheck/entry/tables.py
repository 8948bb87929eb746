"""Tables for people at a terminal, drawn with rich.

Only the CLI's human output imports this module (and with it rich); the hooks, the agent
and `--json` never do. In a terminal the table fits the window (long messages wrap inside
their column) and statuses are coloured; in a pipe or a file there is no colour and no
wrapping, one line per row, so `grep` and `head` see whole rows.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Failures first: the order rows are shown in, and the colour each status gets.
STATUS_ORDER = ("FAIL", "ERROR", "WARN", "SKIP", "PASS")
STATUS_STYLE = {
    "FAIL": "bold red",
    "ERROR": "bold magenta",
    "WARN": "yellow",
    "SKIP": "dim",
    "PASS": "green",
}
# Wide enough that a pipe never wraps a row; a terminal uses its own width.
PIPE_WIDTH = 10_000


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich would exit 1 here, which reads as "a check failed"; the CLI turns this
        # into its own exit code for a closed pipe instead.
        raise BrokenPipeError


def console(stream: IO[str] | None = None) -> Console:
    """A console on `stream` (stdout): colour and the window's width in a terminal,
    neither in a pipe. NO_COLOR and TERM=dumb are honoured by rich."""
    out = stream or sys.stdout
    tty = out.isatty()
    return _Console(
        file=out,
        force_terminal=tty,
        color_system="auto" if tty else None,
        width=None if tty else _pipe_width(os.environ.get("COLUMNS", "")),
        highlight=False,
        soft_wrap=not tty,
    )


def _pipe_width(columns: str) -> int:
    """$COLUMNS when someone set it to a number, else no wrapping at all."""
    return int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH


def status_rank(status: str) -> int:
    return STATUS_ORDER.index(status) if status in STATUS_ORDER else len(STATUS_ORDER)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    status_column: int | None = None,
    whole: Sequence[int] = (0,),
) -> Table:
    """A borderless table. The columns in `whole` (ids) and the status column are never
    cut; the others wrap when the window is too narrow. The cells of `status_column` are
    coloured by status."""
    keep = {*whole, *([] if status_column is None else [status_column])}
    grid = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for index, header in enumerate(headers):
        grid.add_column(header, no_wrap=index in keep, overflow="fold")
    for row in rows:
        cells = [Text(str(cell)) for cell in row]
        if status_column is not None:
            status = str(row[status_column])
            cells[status_column] = Text(status, style=STATUS_STYLE.get(status, ""))
        grid.add_row(*cells)
    return grid


def show(items: Iterable[object], stream: IO[str] | None = None) -> None:
    """Print tables and plain lines (never read as rich markup) on one console."""
    out = console(stream)
    for item in items:
        if isinstance(item, str):
            out.print(Text(item))
        else:
            out.print(item)


def run_report(out: Any, failed_only: bool = False) -> list[object]:
    """What a manual run prints: the results, failures first, then the verdict."""
    where = f"node {out.node} (class {out.node_class}), phase {out.phase}"
    if out.action_taken == "disabled":
        why = "; ".join(out.notes) or "killswitch on"
        return [
            f"{where}: DISABLED - {why}",
            "no check ran; every prolog, epilog and health run is a logged no-op until the "
            "killswitch is removed",
        ]
    results = sorted(out.results, key=lambda r: status_rank(r.status.name))
    if failed_only:
        results = [r for r in results if r.status.name in ("FAIL", "ERROR", "WARN")]
    rows = [(r.check_id, r.component, r.status.name, r.message) for r in results]
    lines: list[object] = []
    if rows:
        lines.append(table(("CHECK", "COMPONENT", "STATUS", "MESSAGE"), rows, status_column=2))
        lines.append("")
    lines.append(f"{where}: {out.verdict.status.name} - {summary(out)} ({out.duration_s:.2f}s)")
    lines.extend(f"note: {note}" for note in out.notes)
    if out.verdict.reason:
        hook = out.phase if out.phase != "manual" else "prolog"
        lines.append(f"a {hook} would drain with: {out.verdict.reason}")
    return lines


def summary(out: Any) -> str:
    """The verdict in words, counting failed checks (not their components)."""
    failures = out.verdict.failures
    if not failures:
        return str(out.verdict.summary)
    checks = len({r.check_id for r in failures})
    return f"{checks} check(s) failed ({len(failures)} component(s))"
