"""Drain reasons: one line, bounded, safe to hand to scontrol, and parseable back.

Format: `nodecheck: <check-id> <component>: <message> [<phase> job <id> sev=<s> act=<a>]`,
with `(+N more)` before the bracket when several checks failed. The most severe failure
leads. The `nodecheck:` prefix is how we know a drain is ours; `parse_reason` reads one back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nodecheck import REASON_PREFIX
from nodecheck.run.results import CheckResult, severity_rank

MAX_REASON = 250
MAX_COMPONENT = 48
# Keep reasons to plain printable ASCII; quotes and shell metacharacters are harmless
# with argument lists, but they make reasons hard to grep and to paste into a shell.
_UNSAFE = re.compile(r"[^A-Za-z0-9 _.,:;/+=%@#()<>*~^!?-]")
_SPACES = re.compile(r"\s+")
_PARSE = re.compile(
    r"^nodecheck: (?P<check>[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*) (?P<component>\S+): "
    r"(?P<message>.*?)(?: \(\+(?P<more>\d+) more\))?(?: \[(?P<context>[^\]]*)\])?$"
)


def clean(text: str) -> str:
    text = _SPACES.sub(" ", text)
    return _UNSAFE.sub("?", text).strip()


def format_reason(
    failures: list[CheckResult], phase: str, job_id: str | None, limit: int = MAX_REASON
) -> str:
    failures = sorted(failures, key=severity_rank)
    first = failures[0]
    component = clean(first.component).replace(" ", "_")
    if len(component) > MAX_COMPONENT:
        component = component[: MAX_COMPONENT - 3] + "..."
    head = f"{REASON_PREFIX} {clean(first.check_id)[:MAX_COMPONENT]} {component}: "
    more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
    context = f"{phase} job {job_id}" if job_id else phase
    if first.severity:
        context += f" sev={first.severity}"
    if first.remedy:
        context += f" act={first.remedy}"
    context = f" [{clean(context)}]"
    room = limit - len(head) - len(more) - len(context)
    message = clean(first.message) or "failed"
    if len(message) > room:
        message = message[: max(room - 3, 0)].rstrip() + "..."
    return f"{head}{message}{more}{context}"[:limit]


_CONTEXT = re.compile(
    r"^(?P<phase>[a-z]+)(?: job (?P<job>\d+))?(?: sev=(?P<sev>[a-z]+))?(?: act=(?P<act>[a-z-]+))?$"
)


@dataclass(frozen=True)
class ParsedReason:
    """A nodecheck drain reason read back into its parts."""

    check_id: str
    component: str
    message: str
    more: int
    context: str
    phase: str = ""
    job_id: str = ""
    severity: str = ""
    remedy: str = ""


def parse_reason(reason: str) -> ParsedReason | None:
    """Read one of our reasons back (None for reasons that are not ours)."""
    found = _PARSE.match(reason)
    if not found:
        return None
    context = found["context"] or ""
    parts = _CONTEXT.match(context)
    return ParsedReason(
        check_id=found["check"],
        component=found["component"],
        message=found["message"],
        more=int(found["more"] or 0),
        context=context,
        phase=(parts and parts["phase"]) or "",
        job_id=(parts and parts["job"]) or "",
        severity=(parts and parts["sev"]) or "",
        remedy=(parts and parts["act"]) or "",
    )
