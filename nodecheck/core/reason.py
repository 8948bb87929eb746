"""Drain reasons: one line, bounded, safe to hand to scontrol, and parseable back.

Format: `nodecheck: <check-id> <component>: <message> [<phase> job <id> sev=<s> act=<a>]`,
with `(+N more)` before the bracket when several checks failed. The most severe failure
leads. The `nodecheck:` prefix is how we know a drain is ours; `parse_reason` reads one back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nodecheck.core.results import CheckResult, severity_rank

MAX_REASON = 250
MAX_COMPONENT = 48
# Keep reasons to plain printable ASCII; quotes and shell metacharacters are harmless
# with argument lists, but they make reasons hard to grep and to paste into a shell. A quote
# in a tool's or driver's words still reads as one: `"` and backquote become `'`, the one
# quote kept (no reader of reasons treats it specially); anything else outside the set: `?`.
_QUOTES = str.maketrans({'"': "'", "`": "'"})
_UNSAFE = re.compile(r"[^A-Za-z0-9 _.,:;/+=%@#()<>*~^!?'-]")
_SPACES = re.compile(r"\s+")
_PARSE = re.compile(
    r"^nodecheck: (?:trend (?P<signal>[a-z][a-z0-9]*\.[a-z][a-z0-9_]*)"
    r"|(?P<check>[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)) (?P<component>\S+): "
    r"(?P<message>.*?)(?: \(\+(?P<more>\d+) more\))?(?: \[(?P<context>[^\]]*)\])?$"
)

# Every reason nodecheck writes starts so; a reason without it is somebody else's.
REASON_PREFIX = "nodecheck:"


# A trend check (checks/trend/, id `trend.<area>_<name>`) names the signal it watches:
# `nodecheck: trend gpu.ecc gpu3: ...` is check trend.gpu_ecc. parse_reason maps it back.
TREND_AREA = "trend"
_TREND_ID = re.compile(r"^trend\.(?P<area>[a-z][a-z0-9]*)_(?P<name>[a-z][a-z0-9_]*)$")


def reason_head(check_id: str) -> str:
    """What a reason says for a check: its id, or `trend <area>.<name>` for a trend."""
    found = _TREND_ID.match(check_id)
    return f"{TREND_AREA} {found['area']}.{found['name']}" if found else check_id


def _trend_id(signal: str) -> str:
    area, name = signal.split(".", 1)
    return f"{TREND_AREA}.{area}_{name}"


def clean(text: str) -> str:
    text = _SPACES.sub(" ", text).translate(_QUOTES)
    return _UNSAFE.sub("?", text).strip()


def format_reason(
    failures: list[CheckResult], phase: str, job_id: str | None, limit: int = MAX_REASON
) -> str:
    failures = sorted(failures, key=severity_rank)
    first = failures[0]
    component = clean(first.component).replace(" ", "_")
    if len(component) > MAX_COMPONENT:
        component = component[: MAX_COMPONENT - 3] + "..."
    head = f"{REASON_PREFIX} {clean(reason_head(first.check_id))[:MAX_COMPONENT]} {component}: "
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
    r"^(?P<phase>[a-z]+)(?: job (?P<job>\d+))?(?: held=(?P<held>\d+))?"
    r"(?: sev=(?P<sev>[a-z]+))?(?: act=(?P<act>[a-z-]+))?$"
)
_CONTEXT_HEAD = re.compile(r"^(?P<head>[a-z]+(?: job \d+)?)")


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
    held_since: str = ""  # epoch seconds the circuit breaker held this failure back


def parse_reason(reason: str) -> ParsedReason | None:
    """Read one of our reasons back (None for reasons that are not ours)."""
    found = _PARSE.match(reason)
    if not found:
        return None
    context = found["context"] or ""
    parts = _CONTEXT.match(context)
    check_id = _trend_id(found["signal"]) if found["signal"] else found["check"]
    return ParsedReason(
        check_id=check_id,
        component=found["component"],
        message=found["message"],
        more=int(found["more"] or 0),
        context=context,
        phase=(parts and parts["phase"]) or "",
        job_id=(parts and parts["job"]) or "",
        severity=(parts and parts["sev"]) or "",
        remedy=(parts and parts["act"]) or "",
        held_since=(parts and parts["held"]) or "",
    )


def is_nodecheck_reason(reason: str) -> bool:
    """Is `reason`, whole, one that format_reason (or the flapping / held-back rewrites of
    one) writes? Strict where parse_reason is lenient: every part must be what nodecheck
    writes, in its character set and with its bracketed context last, so that anything an
    admin appended ("... [prolog job 4 sev=high act=admin] -- RMA 44 KEEP DRAINED") or put
    in brackets makes it not nodecheck's. Words an admin typed inside the message in
    nodecheck's own character set cannot be told apart here: only the exact reason kept in
    the node's state (core/node.py) tells those."""
    if len(reason) > MAX_REASON:
        return False
    parsed = parse_reason(reason)
    if parsed is None or not parsed.context or not _CONTEXT.match(parsed.context):
        return False
    if clean(parsed.message) != parsed.message or not parsed.message:
        return False
    if clean(parsed.component) != parsed.component or len(parsed.component) > MAX_COMPONENT:
        return False
    more = f" (+{parsed.more} more)" if parsed.more else ""
    rebuilt = (
        f"{REASON_PREFIX} {reason_head(parsed.check_id)} {parsed.component}: {parsed.message}{more}"
        f" [{parsed.context}]"
    )
    return rebuilt == reason


def with_held_since(reason: str, since: float) -> str:
    """The reason of a drain the circuit breaker had held back, with `held=<epoch>` in its
    context: the wave back-off ranks such drains by that time, so the oldest failure drains
    first when the breaker closes. Reasons that are not ours come back unchanged."""
    parsed = parse_reason(reason)
    if parsed is None or parsed.held_since or not parsed.context:
        return reason
    head = _CONTEXT_HEAD.match(parsed.context)
    if head is None:
        return reason
    context = f"{head['head']} held={int(since)}{parsed.context[head.end() :]}"
    tail = f" [{parsed.context}]"
    body = reason[: len(reason) - len(tail)]
    room = MAX_REASON - len(f" [{context}]")
    if len(body) > room:
        body = body[: max(room - 3, 0)].rstrip() + "..."
    return f"{body} [{context}]"


def human_window(seconds: float) -> str:
    """86400 -> 24h, 1800 -> 30m, 90 -> 90s."""
    s = int(seconds)
    if s >= 3600 and s % 3600 == 0:
        return f"{s // 3600}h"
    if s >= 60 and s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


FLAPPING = "flapping"


def flapping_prefix(drains: int, window_s: float) -> str:
    return f"{FLAPPING} (drained {drains}x in {human_window(window_s)})"


def flapping_reason(reason: str, prefix: str, limit: int = MAX_REASON) -> str:
    """`nodecheck: <check> <component>: flapping (drained 4x in 24h) <message> [...]`: the
    same reason with the prefix in front of the message (shortened to fit), so that
    parse_reason still reads check, component and context."""
    parsed = parse_reason(reason)
    if parsed is None:
        return reason
    if is_flapping_message(parsed.message):
        message = parsed.message.split(") ", 1)[1] if ") " in parsed.message else ""
    else:
        message = parsed.message
    head = f"{REASON_PREFIX} {reason_head(parsed.check_id)} {parsed.component}: {prefix} "
    more = f" (+{parsed.more} more)" if parsed.more else ""
    context = f" [{parsed.context}]" if parsed.context else ""
    room = limit - len(head) - len(more) - len(context)
    if len(message) > room:
        message = message[: max(room - 3, 0)].rstrip() + "..."
    return f"{head}{message}{more}{context}"[:limit]


def is_flapping_message(message: str) -> bool:
    return message.startswith(f"{FLAPPING} (drained ")
