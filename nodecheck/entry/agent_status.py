"""`nodecheck agent --status`: what the running agent holds, asked through its own socket.

The agent answers a request of phase `status` from a worker forked like any other: the
worker prints the agent's view as it was at the fork (its pid, uptime, runs served and in
progress, the probe pool's members, and the members a run killed for hanging that the
kernel still holds) as one JSON line on the client's stdout. Here that line is read back
and shown; exit 0 when all is well, 1 when probe processes are stuck in the kernel (an
admin should look for a hung mount or a GPU off the bus), 3 when no agent answers.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

STATUS_PHASE = "status"
EXIT_STUCK = 1
EXIT_NO_AGENT = 3


def ask(path: str) -> dict[str, Any]:
    """The agent's view, through its socket; AgentUnavailable when nobody serves it. The
    worker writes it on the stdout it is handed: a pipe of ours."""
    from nodecheck.entry.agent_client import AgentUnavailable, run_in_agent

    read_fd, write_fd = os.pipe()  # the view is one short line: the pipe holds it
    try:
        code = run_in_agent(path, STATUS_PHASE, fds=(0, write_fd, 2))
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reply:
        text = reply.read().decode(errors="replace")
    if code != 0:
        raise AgentUnavailable(f"the agent's worker said exit {code}")
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            view = json.loads(line)
            if isinstance(view, dict) and view.get("event") == "agent_status":
                return view
    raise AgentUnavailable("the agent sent no status")


def render(view: dict[str, Any]) -> str:
    pool = view.get("probe_pool") or {}
    lines = [
        f"agent pid {view.get('pid')} on {view.get('socket')}, up {view.get('uptime_s')} s; "
        f"{view.get('served')} run(s) served, {view.get('workers')} in progress",
        "probe pool: "
        + (", ".join(f"{group} (pid {pid})" for group, pid in sorted(pool.items())) or "none")
        + (" - lent to a run now" if view.get("pool_lent") else ""),
    ]
    stuck = view.get("stuck") or []
    if stuck:
        lines.append(
            "STUCK probe processes (killed for hanging, still held by the kernel: look for a "
            "hung mount or a GPU off the bus): "
            + ", ".join(f"{s['group']} (pid {s['pid']})" for s in stuck)
        )
    if view.get("not_loaded"):
        lines.append(f"not loaded: {', '.join(view['not_loaded'])}")
    return "\n".join(lines)


def main(path: str, as_json: bool) -> int:
    from nodecheck.entry.agent_client import AgentUnavailable

    try:
        view = ask(path)
    except AgentUnavailable as exc:
        print(f"nodecheck agent --status: no agent answers on {path}: {exc}")
        return EXIT_NO_AGENT
    print(json.dumps(view, indent=2) if as_json else render(view))
    return EXIT_STUCK if view.get("stuck") else 0
