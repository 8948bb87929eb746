"""Node records from Slurm's JSON output (`scontrol --json show node`, `sinfo --json`).

Slurm has printed node state as JSON through several data_parser versions; the fields
nodecheck reads differ only in two places (real output of each release is kept in
tests/fixtures/real/slurm/):

    field               22.05 sinfo --json (openapi v0.0.38)   >= 23.02 scontrol --json
    state               "idle" (base state only, lower case)   ["IDLE", "DRAIN"]
    state_flags         ["DRAIN"]                               (absent; flags are in state)
    reason_changed_at   1796155991 (epoch)                      {"set": true, "infinite":
                                                                 false, "number": 1796155986}
    reason, reason_set_by_user, partitions, name: the same everywhere.

A node without a reason still carries the user of its last state change in 24.11
(`"reason_set_by_user": "root"` with `"reason": ""`); the text form prints no Reason line
then, so user and time are only kept together with a reason.
"""

from __future__ import annotations

import json
from typing import Any

from nodecheck.core.node import NodeInfo
from nodecheck.slurm import SlurmError, format_reason_time


def json_records(text: str, key: str, what: str = "Slurm's JSON output") -> list[dict[str, Any]]:
    """The records under `key` of one JSON document Slurm wrote (`what` names it in the
    errors); SlurmError when it does not parse, has no such list, or reports errors."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise SlurmError(f"{what} does not parse: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get(key), list):
        raise SlurmError(f"{what} has no '{key}' list")
    errors = [e for e in document.get("errors") or [] if isinstance(e, dict)]
    if errors:
        detail = "; ".join(str(e.get("description") or e.get("error") or e) for e in errors)
        raise SlurmError(f"Slurm reported errors: {detail[:300]}")
    return [record for record in document[key] if isinstance(record, dict)]


def parse_node_json(text: str) -> list[NodeInfo]:
    """Every node record of one JSON document; SlurmError when it is not one Slurm wrote."""
    return [_node(record) for record in json_records(text, "nodes")]


def _node(record: dict[str, Any]) -> NodeInfo:
    name = record.get("name")
    if not isinstance(name, str) or not name:
        raise SlurmError(f"node record without a name: {sorted(record)[:8]}")
    reason = _text(record.get("reason"))
    user = _text(record.get("reason_set_by_user")) if reason else ""
    when = _epoch(record.get("reason_changed_at")) if reason else None
    return NodeInfo(
        name=name,
        states=_states(record),
        reason=reason,
        reason_user=user,
        reason_time=format_reason_time(when) if when else "",
        partitions=tuple(p for p in record.get("partitions") or [] if isinstance(p, str) and p),
    )


def _states(record: dict[str, Any]) -> tuple[str, ...]:
    state = record.get("state")
    words = [state] if isinstance(state, str) else list(state or [])
    words += list(record.get("state_flags") or [])
    return tuple(w.upper() for w in words if isinstance(w, str) and w)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _epoch(value: Any) -> int | None:
    """Seconds since the epoch from a plain number or a {"set", "infinite", "number"} one."""
    if isinstance(value, dict):
        if not value.get("set") or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def scontrol_offers_json(help_text: str) -> bool:
    """Whether this scontrol has `--json` (23.02 and later), from `scontrol --help`, which
    contacts no daemon: one cheap look, once per backend."""
    return any(line.lstrip().startswith("--json") for line in help_text.splitlines())
