"""host.services: required daemons alive (nvidia-fabricmanager, munge...)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from nodecheck.checks.context import CheckContext
from nodecheck.checks.host.common import GROUP
from nodecheck.checks.registry import Option, check
from nodecheck.core.results import CheckResult, Status

if TYPE_CHECKING:  # psutil loads in the probe process only (checks.host.common)
    from nodecheck.probes import host as host_probe


@check(
    "host.services",
    group=GROUP,
    summary="required daemons running (by process name, as root or the user `users` names), "
    "e.g. munged, nvidia-fabricmanager",
    timeout_s=3.0,
    severity="critical",
    remedy="restart-service",
    options={
        "required": Option(list, [], "process names that must be running", item=str),
        "users": Option(
            dict,
            {},
            "service -> the user it runs as (name or uid; default root): only a process of "
            'that user counts, e.g. {munged = "munge"}',
            item=str,
        ),
    },
)
def host_services(ctx: CheckContext) -> Iterator[CheckResult]:
    """Without munged no Slurm RPC authenticates; without nvidia-fabricmanager an NVSwitch
    system's GPUs cannot talk. Fix: restart the daemon and find why it died (journal, core)."""
    from nodecheck.probes import host

    required: list[str] = ctx.options["required"]
    if not required:
        yield CheckResult("host.services", Status.SKIP, "no services configured")
        return
    users: dict[str, str] = ctx.options["users"]
    procs = list(host.processes(ctx.proc_path(), with_cgroup=False).values())
    for name in required:
        user = users.get(name, "root")
        uid = uid_of(user)
        if uid is None:
            yield CheckResult(
                "host.services",
                Status.ERROR,
                f"users: no such user {user!r} on this node",
                component=name,
            )
            continue
        status, message = judge_service(name, user, uid, procs)
        yield CheckResult("host.services", status, message, component=name)


def uid_of(user: str) -> int | None:
    """A user name (or a uid written as digits) as a uid; None when the node has no such user."""
    if user.isdigit():
        return int(user)
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def judge_service(
    name: str, user: str, uid: int, procs: Iterable[host_probe.Process]
) -> tuple[Status, str]:
    """Is `name` running as `uid`? A name alone proves nothing: any user can start a
    process with any comm (a copy of a program under that name, or prctl(PR_SET_NAME))
    and argv. Only a process all of whose uids (real, effective, saved) are the service's
    counts; a setuid program a user started has the user's real uid, so it never does."""
    # /proc/PID/comm is truncated to 15 characters by the kernel.
    named = [p for p in procs if not p.zombie and p.name[:15] == name[:15]]
    if any(p.uid == p.euid == p.suid == uid for p in named):
        return Status.PASS, "running"
    if named:
        others = ", ".join(str(u) for u in sorted({p.uid for p in named} | {p.euid for p in named}))
        return Status.FAIL, f"not running as {user}: only processes of uid {others} bear its name"
    return Status.FAIL, "not running"
