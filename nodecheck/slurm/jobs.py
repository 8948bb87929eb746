"""Validation jobs and the maintenance reservation they run in, through Slurm's CLI.

Only the quarantine loop comes here (an admin's `nodecheck validate`, or cron): never a
hook. Argument lists only; node names are checked before they reach a command line, and
every other word is nodecheck's own text. Jobs are read from `squeue --json`, by Slurm's
codes (slurm/job_json.py); never from the prose `scontrol show job` prints as a reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from nodecheck import hostlist
from nodecheck.log import get_logger
from nodecheck.slurm import SlurmError, checked_node_name, checked_reason, failed, run_slurm_tool
from nodecheck.slurm.job_json import JobRecord, parse_squeue_json
from nodecheck.slurm.scontrol import ScontrolBackend

# A reservation's `scontrol show -o reservation` record is "Key=Value Key=Value ...".
_FIELD = re.compile(r"(\w+)=(\S*)")


def parse_reservation_nodes(text: str) -> list[str]:
    """The node list of `scontrol show -o reservation NAME`, as Slurm writes it."""
    fields = dict(_FIELD.findall(text))
    nodes = fields.get("Nodes", "")
    return [] if nodes in ("", "(null)") else [nodes]


class SlurmJobs:
    """sbatch, scancel, squeue and reservations next to the scontrol backend (same paths,
    same environment)."""

    def __init__(self, cli: ScontrolBackend) -> None:
        self.cli = cli
        bindir = Path(cli.scontrol).parent
        self.sbatch = str(bindir / "sbatch")
        self.scancel = str(bindir / "scancel")
        self.squeue = str(bindir / "squeue")

    # -- the reservation ------------------------------------------------------------------

    def reservation_exists(self, name: str) -> bool:
        try:
            self.cli._run([self.cli.scontrol, "show", "-o", "reservation", name])
        except SlurmError:
            return False
        return True

    def reservation_nodes(self, name: str) -> list[str]:
        """The reservation's nodes, expanded (nodecheck.hostlist expands as Slurm does);
        [] when there is no reservation."""
        try:
            text = self.cli._run([self.cli.scontrol, "show", "-o", "reservation", name])
        except SlurmError:
            return []
        found = parse_reservation_nodes(text)
        if not found:
            return []
        return hostlist.expand(found[0])

    def reserve(self, name: str, nodes: list[str]) -> None:
        """Add `nodes` to the reservation, creating it if needed. MAINT keeps it out of
        utilisation figures; IGNORE_JOBS lets it cover a node still running a job;
        Users=root keeps every user job off these nodes. Read, then write (22.05 has no
        `Nodes+=`): callers hold the validate lock (quarantine/claim.py) around it."""
        current = self.reservation_nodes(name)
        if current:
            self.set_nodes(name, sorted({*current, *nodes}))
            return
        node_list = ",".join(checked_node_name(n) for n in nodes)
        try:
            self.cli._run(
                [
                    self.cli.scontrol,
                    "create",
                    "reservation",
                    f"ReservationName={name}",
                    "Users=root",
                    f"Nodes={node_list}",
                    "StartTime=now",
                    "Duration=UNLIMITED",
                    "Flags=MAINT,IGNORE_JOBS",
                ]
            )
        except SlurmError:
            # Made a moment ago by a run on another host: add to it instead.
            current = self.reservation_nodes(name)
            if not current:
                raise
            self.set_nodes(name, sorted({*current, *nodes}))

    def set_nodes(self, name: str, nodes: list[str]) -> None:
        node_list = ",".join(checked_node_name(n) for n in nodes)
        self.cli._run(
            [self.cli.scontrol, "update", f"ReservationName={name}", f"Nodes={node_list}"]
        )

    def release(self, name: str, nodes: list[str]) -> str:
        """Take `nodes` out of the reservation; delete it once it holds no other node.
        Returns "" or what stood in the way: a reservation that a job still uses (one not
        of this run's: Slurm refuses "Requested reservation is in use") keeps its last
        node, and the caller says so instead of failing the whole run."""
        current = self.reservation_nodes(name)
        keep = [n for n in current if n not in nodes]
        if keep:
            if len(keep) != len(current):
                self.set_nodes(name, keep)
            return ""
        if not self.reservation_exists(name):
            return ""
        try:
            self.cli._run([self.cli.scontrol, "delete", f"ReservationName={name}"])
        except SlurmError as exc:
            get_logger().error("reservation_not_deleted", reservation=name, error=str(exc))
            return f"reservation {name} kept: {exc}"
        return ""

    # -- jobs -----------------------------------------------------------------------------

    def submit(
        self,
        node: str | Sequence[str],
        reservation: str,
        job_name: str,
        comment: str,
        script: str,
        script_args: list[str],
        time_limit_min: int,
        *,
        hold: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """One batch job on exactly `node` (or on exactly these nodes: the fabric stage's
        job) inside the reservation, held (it starts only once the loop has settled and
        resumed the node: `release_job`); returns its id. --no-requeue: a job whose prolog
        fails ends (CANCELLED) instead of being requeued and held, where it would keep the
        reservation "in use". The script is an executable (its #! line says how it runs):
        no shell, no --wrap. `env`: added to sbatch's environment, which the job takes
        (how a secret reaches it without a command line, which every user can read)."""
        nodes = [node] if isinstance(node, str) else list(node)
        args = [
            self.sbatch,
            "--parsable",
            *(["--hold"] if hold else []),
            "--no-requeue",
            f"--reservation={reservation}",
            f"--nodelist={','.join(checked_node_name(n) for n in nodes)}",
            f"--nodes={len(nodes)}",
            "--exclusive",
            f"--job-name={job_name}",
            f"--comment={checked_reason(comment)}",
            f"--time={time_limit_min}",
            "--output=/dev/null",
            "--chdir=/",
            script,
            *script_args,
        ]
        out = self._run_with(args, env) if env else self.cli._run(args)
        job = out.strip().split(";")[0]
        if not job.isdigit():
            raise SlurmError(f"sbatch printed no job id: {out[:200]!r}")
        return int(job)

    def _run_with(self, args: list[str], extra: Mapping[str, str]) -> str:
        """The backend's call with `extra` added to the command's environment (the
        backend gives every command the same small one)."""
        proc = run_slurm_tool(args, self.cli.slurm_conf, self.cli.timeout_s, args[0], extra)
        if proc.returncode != 0:
            raise failed(proc, Path(args[0]).name)
        return proc.stdout

    def jobs_named(self, job_name: str) -> list[JobRecord]:
        """Every job of this name slurmctld still holds, finished ones included. One
        `squeue --json` for all of them (22.05 ignores the filters with --json and returns
        every job; later releases apply them: --states=all keeps the finished ones)."""
        text = self.cli._run([self.squeue, "--json", "--states=all", f"--name={job_name}"])
        return [j for j in parse_squeue_json(text) if j.name == job_name]

    def release_job(self, job_id: int) -> None:
        self.cli._run([self.cli.scontrol, "release", str(job_id)])

    def cancel(self, job_id: int) -> None:
        self.cli._run([self.scancel, str(job_id)])

    def note_on_job(self, job_id: int, text: str) -> None:
        """Set the job's AdminComment (root only; kept by accounting): how a validation job
        tells the loop that submitted it why it could not validate its node."""
        self.cli._run(
            [self.cli.scontrol, "update", f"JobId={job_id}", f"AdminComment={checked_reason(text)}"]
        )

    def set_down(self, node: str, reason: str) -> None:
        """Put a node back DOWN, as the loop found it, with its reason."""
        self.cli._run(
            [
                self.cli.scontrol,
                "update",
                f"NodeName={checked_node_name(node)}",
                "State=DOWN",
                f'Reason="{checked_reason(reason)}"',
            ]
        )

    def reboot(self, node: str, reason: str) -> None:
        """Reboot through Slurm as soon as the node is idle (its RebootProgram). It comes
        back resumed but still inside the reservation, so only the next validation job
        runs there until the loop releases it."""
        self.cli._run(
            [
                self.cli.scontrol,
                "reboot",
                "ASAP",
                "nextstate=RESUME",
                f"reason={checked_reason(reason)}",
                checked_node_name(node),
            ]
        )
