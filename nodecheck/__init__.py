"""nodecheck: Slurm Prolog/Epilog node health checks for GPU clusters."""

__version__ = "0.1.0"
