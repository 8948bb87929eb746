"""The quarantine loop: a node returns to service only after it passes deep validation,
run as Slurm jobs inside a maintenance reservation nodecheck owns; nodes that keep failing
climb an escalation ladder (drain for repair, reboot, replace) with alerts."""

DEFAULT_WHY = "requested by an admin"  # a validation job's comment when no --why is given
