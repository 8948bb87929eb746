"""Which Slurm backend a run talks through: pyslurm where it is built for the running Slurm,
else scontrol, and why (README: slurm_backend)."""

from __future__ import annotations

from dataclasses import dataclass

from nodecheck.slurm import SlurmBackend, SlurmError


@dataclass(frozen=True)
class BackendChoice:
    backend: SlurmBackend
    why: str


def select_backend(
    preference: str = "auto",
    scontrol_path: str = "/usr/bin/scontrol",
    slurm_conf: str | None = None,
) -> BackendChoice:
    """Pick pyslurm when asked for or usable, else scontrol; explain the choice."""
    from nodecheck.slurm.scontrol import ScontrolBackend

    if preference == "scontrol":
        return BackendChoice(ScontrolBackend(scontrol_path, slurm_conf), "configured: scontrol")
    from nodecheck.slurm.pyslurm_backend import (
        PyslurmBackend,
        pyslurm_unusable_reason,
        pyslurm_versions,
    )

    problem = pyslurm_unusable_reason()
    if problem is None:
        versions = ", ".join(f"{k} {v}" for k, v in pyslurm_versions().items())
        try:
            backend = PyslurmBackend(slurm_conf, scontrol_path)
        except SlurmError as exc:  # e.g. no slurm.conf where libslurm would look
            problem = str(exc)
        else:
            return BackendChoice(backend, f"pyslurm matches the running Slurm ({versions})")
    if preference == "pyslurm":
        raise SlurmError(f"slurm_backend = 'pyslurm' but pyslurm is unusable: {problem}")
    return BackendChoice(
        ScontrolBackend(scontrol_path, slurm_conf), f"scontrol (pyslurm unusable: {problem})"
    )
