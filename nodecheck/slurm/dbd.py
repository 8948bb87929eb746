"""slurmdbd's records, read with `sacctmgr` (and, additively, `sacct`): the cluster's own
history, for cluster-wide views that must not read every node.

slurmctld sends every node state change (DRAIN, DOWN, FAIL, ...) with its reason, user and
time to slurmdbd as a node *event*; `sacctmgr show event` reads them back. One call costs
slurmdbd a query whose answer grows with the events asked for (the drains in a window, one
node's history), never with the cluster's size, and it costs slurmctld nothing. Events are
asynchronous: slurmctld queues them to slurmdbd, so a drain shows there a moment after
`scontrol` returned (about a second on the test cluster, see docs/safety.md).

Argument lists only, never a shell; `-n -P` (no header, `|` between fields) with the free
text (the reason) last, so a `|` inside a reason cannot shift the other fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from nodecheck.hostlist import is_plain_node_name
from nodecheck.slurm import SlurmError, failed, run_slurm_tool

# Order matters: parse_events reads them back in this order, Reason last (free text).
EVENT_FIELDS = ("Cluster", "NodeName", "Start", "End", "State", "StateRaw", "User", "Reason")

# DRAIN/DRAINED/DRAINING all show in slurmdbd as the DRAIN flag of the event's state.
DRAIN_STATE = "DRAIN"


@dataclass(frozen=True)
class NodeEvent:
    """One node event as slurmdbd keeps it."""

    cluster: str
    node: str
    start: float  # epoch seconds (slurmctld's clock)
    end: float | None  # None: still open (the node is in this state now)
    state: str  # as sacctmgr prints it, e.g. "DRAIN", "DOWN*", "IDLE+DRAIN"
    state_raw: int
    user: str  # "root(0)"
    reason: str

    @property
    def open(self) -> bool:
        return self.end is None

    @property
    def drain(self) -> bool:
        return DRAIN_STATE in self.state.upper().replace("*", "").split("+")


def _epoch(text: str) -> float | None:
    """sacctmgr prints local ISO time, 'Unknown' for an open end."""
    if not text or text in ("Unknown", "None"):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def format_time(epoch: float) -> str:
    """A time as sacctmgr takes it (local time, no zone), like Slurm's own output."""
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%dT%H:%M:%S")


def event_args(
    sacctmgr: str,
    *,
    nodes: tuple[str, ...] = (),
    states: tuple[str, ...] = (),
    start: float | None = None,
    end: float | None = None,
    cluster: str | None = None,
) -> list[str]:
    """`sacctmgr show event` for node events. Without start/end and with states, slurmdbd
    answers only the events open now (the nodes in that state now); with a start, every
    event of those states that overlaps [start, end or now]."""
    args = [sacctmgr, "-n", "-P", "show", "event", "Event=Node"]
    for node in nodes:
        if not is_plain_node_name(node):
            raise SlurmError(f"refusing node name {node!r}: not a plain host name")
    if nodes:
        args.append("Nodes=" + ",".join(nodes))
    for state in states:
        if not state.isalpha():
            raise SlurmError(f"refusing node state {state!r}")
    if states:
        args.append("States=" + ",".join(states))
    if start is not None:
        args.append("Start=" + format_time(start))
    if end is not None:
        args.append("End=" + format_time(end))
    if cluster is not None:
        if not is_plain_node_name(cluster):
            raise SlurmError(f"refusing cluster name {cluster!r}")
        args.append("Clusters=" + cluster)
    args.append("format=" + ",".join(EVENT_FIELDS))
    return args


def parse_events(text: str) -> list[NodeEvent]:
    """`sacctmgr -n -P show event format=<EVENT_FIELDS>`: one event a line. Cluster events
    (no node name) and lines that do not parse are left out."""
    out: list[NodeEvent] = []
    for line in text.splitlines():
        parts = line.split("|", len(EVENT_FIELDS) - 1)
        if len(parts) != len(EVENT_FIELDS):
            continue
        cluster, node, start, end, state, raw, user, reason = parts
        began = _epoch(start)
        if not node or began is None:
            continue
        out.append(
            NodeEvent(
                cluster=cluster,
                node=node,
                start=began,
                end=_epoch(end),
                state=state,
                state_raw=int(raw) if raw.isdigit() else 0,
                user=user,
                reason=reason,
            )
        )
    return out


@dataclass(frozen=True)
class CallCount:
    """What the reader asked of slurmdbd: calls made and bytes read (for bench-scale)."""

    calls: int = 0
    bytes_read: int = 0


class DbdReader:
    """Reads slurmdbd through sacctmgr. Counts its own calls and bytes."""

    def __init__(
        self,
        sacctmgr_path: str = "/usr/bin/sacctmgr",
        slurm_conf: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.sacctmgr = sacctmgr_path
        self.slurm_conf = slurm_conf
        self.timeout_s = timeout_s
        self.count = CallCount()

    def _run(self, args: list[str]) -> str:
        what = f"{args[0]} {' '.join(args[3:5])}"
        proc = run_slurm_tool(args, self.slurm_conf, self.timeout_s, what)
        self.count = CallCount(self.count.calls + 1, self.count.bytes_read + len(proc.stdout))
        if proc.returncode != 0:
            raise failed(proc, "sacctmgr show event")
        return proc.stdout

    def events(
        self,
        *,
        nodes: tuple[str, ...] = (),
        states: tuple[str, ...] = (),
        start: float | None = None,
        end: float | None = None,
        cluster: str | None = None,
    ) -> list[NodeEvent]:
        args = event_args(
            self.sacctmgr, nodes=nodes, states=states, start=start, end=end, cluster=cluster
        )
        return parse_events(self._run(args))

    def open_drains(self, cluster: str | None = None) -> list[NodeEvent]:
        """The nodes drained now, with the reason and time of their drain: one query whose
        size is the number of drained nodes, not the cluster's."""
        return [e for e in self.events(states=(DRAIN_STATE,), cluster=cluster) if e.open]

    def drains_since(self, since: float, cluster: str | None = None) -> list[NodeEvent]:
        """Every drain event open at some moment since `since` (ended ones included)."""
        return self.events(states=(DRAIN_STATE,), start=since, cluster=cluster)

    def node_history(self, node: str, since: float | None = None) -> list[NodeEvent]:
        """One node's events, oldest first."""
        found = self.events(nodes=(node,), start=since)
        return sorted(found, key=lambda e: e.start)


# --- jobs (sacct), for `nodecheck report --lemons` ---------------------------------------
# Additive: the job records slurmdbd keeps, read with one `sacct` call per report. The
# fields are fixed and none is free text (no job name, no comment): a user's job name can
# hold any character, `|` included, and is never asked for.
JOB_FIELDS = ("JobIDRaw", "User", "State", "Start", "End", "ElapsedRaw", "NNodes", "NodeList",
              "AllocTRES")  # fmt: skip
# The job states that say a job ended badly on its node(s) (sacct --state abbreviations).
FAILED_JOB_STATES = ("FAILED", "NODE_FAIL")


@dataclass(frozen=True)
class JobRecord:
    """One job allocation as slurmdbd keeps it (sacct -X)."""

    job_id: str
    user: str
    state: str  # "FAILED", "NODE_FAIL", "CANCELLED by 0", ...
    start: float | None
    end: float | None
    elapsed_s: int
    nnodes: int
    nodelist: str  # Slurm host list, e.g. "n[1-3]"
    gpus: int  # gres/gpu of the whole allocation (AllocTRES), 0 when none

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.elapsed_s / 3600.0

    def gpu_hours_per_node(self) -> float:
        """GPU-hours the job used on each of its nodes (Slurm counts the allocation's)."""
        return self.gpu_hours / max(self.nnodes, 1)


def job_args(
    sacct: str,
    *,
    start: float,
    end: float,
    states: tuple[str, ...] = FAILED_JOB_STATES,
    nodes: tuple[str, ...] = (),
) -> list[str]:
    """`sacct` for the allocations (-X) of every user (-a) that ended in `states` between
    start and end, on `nodes` when given. One call: its answer grows with the jobs in the
    window, not with the cluster's size."""
    for state in states:
        if not state.replace("_", "").isalpha():
            raise SlurmError(f"refusing job state {state!r}")
    args = [sacct, "-n", "-P", "-X", "-a", "-S", format_time(start), "-E", format_time(end)]
    if states:
        args += ["--state=" + ",".join(states)]
    for node in nodes:
        if not is_plain_node_name(node):
            raise SlurmError(f"refusing node name {node!r}: not a plain host name")
    if nodes:
        args += ["--nodelist=" + ",".join(nodes)]
    return [*args, "--format=" + ",".join(JOB_FIELDS)]


def _gpus(tres: str) -> int:
    """AllocTRES `cpu=8,mem=64G,node=1,billing=8,gres/gpu=8` -> 8 (typed gpus summed only
    when no untyped count is given: gres/gpu=8 and gres/gpu:h100=8 are the same GPUs)."""
    plain, typed = 0, 0
    for item in tres.split(","):
        key, _, value = item.partition("=")
        if not value.isdigit():
            continue
        if key == "gres/gpu":
            plain += int(value)
        elif key.startswith("gres/gpu:"):
            typed += int(value)
    return plain or typed


def parse_jobs(text: str) -> list[JobRecord]:
    """`sacct -n -P -X --format=<JOB_FIELDS>` lines; lines that do not parse are left out."""
    out: list[JobRecord] = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != len(JOB_FIELDS):
            continue
        job_id, user, state, start, end, elapsed, nnodes, nodelist, tres = parts
        if not job_id:
            continue
        out.append(
            JobRecord(
                job_id=job_id,
                user=user,
                state=state,
                start=_epoch(start),
                end=_epoch(end),
                elapsed_s=int(elapsed) if elapsed.isdigit() else 0,
                nnodes=int(nnodes) if nnodes.isdigit() else 1,
                nodelist=nodelist,
                gpus=_gpus(tres),
            )
        )
    return out


def read_jobs(
    sacct: str, slurm_conf: str | None, *, start: float, end: float, timeout_s: float = 30.0
) -> list[JobRecord]:
    """The jobs that ended FAILED or NODE_FAIL between start and end, cluster-wide."""
    return parse_jobs(_sacct(job_args(sacct, start=start, end=end), slurm_conf, timeout_s))


def _sacct(args: list[str], slurm_conf: str | None, timeout_s: float) -> str:
    """One bounded sacct call's output; SlurmError when it cannot run or fails."""
    proc = run_slurm_tool(args, slurm_conf, timeout_s, args[0])
    if proc.returncode != 0:
        raise failed(proc, "sacct")
    return proc.stdout


# Validation jobs' AdminComments, for the class median: the figures a validation job
# published there (checks/trend/class_median.py), read back by the next validation of another
# node of its class with one `sacct` call. AdminComment is free text: it comes last, so a `|`
# in it shifts nothing.
VALIDATION_FIELDS = ("NodeList", "End", "AdminComment")
_JOB_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class JobComment:
    """The AdminComment of one finished single-node job, with its node and end."""

    node: str
    end: float
    comment: str


def validation_comment_args(sacct: str, job_name: str, *, start: float, end: float) -> list[str]:
    """`sacct` for the jobs named `job_name` of every user (-a) that COMPLETED (exit 0: the
    validation passed) between start and end. One call: its answer grows with the
    validations in the window, not with the cluster's size. Only root can set an
    AdminComment, so a user's job of the same name carries none."""
    if not job_name or not set(job_name) <= _JOB_NAME:
        raise SlurmError(f"refusing job name {job_name!r}")
    return [sacct, "-n", "-P", "-X", "-a", f"--name={job_name}", "--state=COMPLETED",
            "-S", format_time(start), "-E", format_time(end),
            "--format=" + ",".join(VALIDATION_FIELDS)]  # fmt: skip


def parse_validation_comments(text: str) -> list[JobComment]:
    """`NodeList|End|AdminComment` lines -> the newest job with a comment per node, by
    node name. A job on several nodes (a fabric stage's: deep.fabric, no GPU figures), one
    without an end or a comment, and lines that do not parse are left out."""
    newest: dict[str, JobComment] = {}
    for line in text.splitlines():
        parts = line.split("|", len(VALIDATION_FIELDS) - 1)
        if len(parts) != len(VALIDATION_FIELDS):
            continue
        node, end_text, comment = parts
        end = _epoch(end_text)
        if end is None or not comment.strip() or not is_plain_node_name(node):
            continue
        if node not in newest or end > newest[node].end:
            newest[node] = JobComment(node, end, comment)
    return [newest[n] for n in sorted(newest)]


def read_validation_comments(
    sacct: str,
    slurm_conf: str | None,
    job_name: str,
    *,
    start: float,
    end: float,
    timeout_s: float = 20.0,
) -> list[JobComment]:
    """The newest passed validation job's AdminComment per node, cluster-wide (SlurmError
    when sacct cannot run or fails: no slurmdbd, no accounting)."""
    args = validation_comment_args(sacct, job_name, start=start, end=end)
    return parse_validation_comments(_sacct(args, slurm_conf, timeout_s))
