"""Validation jobs and the maintenance reservation they run in, through Slurm's CLI.

Only the quarantine loop comes here (an admin's `nodecheck validate`, or cron): never a
hook. Argument lists only; node names are checked before they reach a command line, and
every other word is nodecheck's own text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nodecheck.slurm import SlurmError
from nodecheck.slurm.scontrol import ScontrolBackend, checked_node_name, checked_reason

# A job's or reservation's `scontrol show` record is "Key=Value Key=Value ..." with -o.
_FIELD = re.compile(r"(\w+)=(\S*)")


@dataclass(frozen=True)
class JobState:
    """What Slurm says about one job: its state, exit code and why it waits."""

    job_id: int
    state: str  # PENDING RUNNING COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL ...
    exit_code: int | None  # the batch script's exit status once it ended
    reason: str = ""
    node: str = ""

    @property
    def finished(self) -> bool:
        return self.state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED")

    @property
    def held_after_launch_failure(self) -> bool:
        """A prolog failure requeues a batch job and holds it: it will never run by itself."""
        return self.state == "PENDING" and "launch failed" in self.reason.lower()


def parse_show_job(text: str) -> JobState:
    fields = dict(_FIELD.findall(text))
    if "JobId" not in fields:
        raise SlurmError(f"unexpected `scontrol show job` output: {text[:200]!r}")
    exit_code = None
    status = fields.get("ExitCode", "")
    if ":" in status:
        code, signal = status.split(":", 1)
        if code.isdigit() and signal.isdigit():
            exit_code = int(code) if int(signal) == 0 else 128 + int(signal)
    return JobState(
        job_id=int(fields["JobId"]),
        state=fields.get("JobState", "UNKNOWN"),
        exit_code=exit_code,
        reason=fields.get("Reason", ""),
        node=fields.get("NodeList", ""),
    )


def parse_reservation_nodes(text: str) -> list[str]:
    """The node list of `scontrol show -o reservation NAME`, as Slurm writes it."""
    fields = dict(_FIELD.findall(text))
    nodes = fields.get("Nodes", "")
    return [] if nodes in ("", "(null)") else [nodes]


class SlurmJobs:
    """sbatch, scancel and reservations next to the scontrol backend (same paths, env)."""

    def __init__(self, cli: ScontrolBackend) -> None:
        self.cli = cli
        bindir = Path(cli.scontrol).parent
        self.sbatch = str(bindir / "sbatch")
        self.scancel = str(bindir / "scancel")

    # -- the reservation ------------------------------------------------------------------

    def reservation_exists(self, name: str) -> bool:
        try:
            self.cli._run([self.cli.scontrol, "show", "-o", "reservation", name])
        except SlurmError:
            return False
        return True

    def reservation_nodes(self, name: str) -> list[str]:
        """The reservation's nodes, expanded by Slurm; [] when there is no reservation."""
        try:
            text = self.cli._run([self.cli.scontrol, "show", "-o", "reservation", name])
        except SlurmError:
            return []
        found = parse_reservation_nodes(text)
        if not found:
            return []
        out = self.cli._run([self.cli.scontrol, "show", "hostnames", found[0]])
        return [line.strip() for line in out.splitlines() if line.strip()]

    def reserve(self, name: str, nodes: list[str]) -> None:
        """Add `nodes` to the reservation, creating it if needed. MAINT keeps it out of
        utilisation figures; IGNORE_JOBS lets it cover a node still running a job;
        Users=root keeps every user job off these nodes."""
        current = self.reservation_nodes(name)
        if current:
            self.set_nodes(name, sorted({*current, *nodes}))
            return
        node_list = ",".join(checked_node_name(n) for n in nodes)
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

    def set_nodes(self, name: str, nodes: list[str]) -> None:
        node_list = ",".join(checked_node_name(n) for n in nodes)
        self.cli._run(
            [self.cli.scontrol, "update", f"ReservationName={name}", f"Nodes={node_list}"]
        )

    def release(self, name: str, nodes: list[str]) -> None:
        """Take `nodes` out of the reservation; delete it once it holds no node."""
        keep = [n for n in self.reservation_nodes(name) if n not in nodes]
        if keep:
            self.set_nodes(name, keep)
        elif self.reservation_exists(name):
            self.cli._run([self.cli.scontrol, "delete", f"ReservationName={name}"])

    # -- jobs -----------------------------------------------------------------------------

    def submit(
        self,
        node: str,
        reservation: str,
        job_name: str,
        comment: str,
        script: str,
        script_args: list[str],
        time_limit_min: int,
    ) -> int:
        """One batch job on exactly `node` inside the reservation; returns its id. The script
        is an executable (its #! line says how it runs): no shell, no --wrap."""
        out = self.cli._run(
            [
                self.sbatch,
                "--parsable",
                f"--reservation={reservation}",
                f"--nodelist={checked_node_name(node)}",
                "--nodes=1",
                "--exclusive",
                f"--job-name={job_name}",
                f"--comment={checked_reason(comment)}",
                f"--time={time_limit_min}",
                "--output=/dev/null",
                "--chdir=/",
                script,
                *script_args,
            ]
        )
        job = out.strip().split(";")[0]
        if not job.isdigit():
            raise SlurmError(f"sbatch printed no job id: {out[:200]!r}")
        return int(job)

    def job_state(self, job_id: int) -> JobState:
        return parse_show_job(self.cli._run([self.cli.scontrol, "show", "-o", "job", str(job_id)]))

    def cancel(self, job_id: int) -> None:
        self.cli._run([self.scancel, str(job_id)])

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
