"""Entry points: the CLI, the hook that slurmd runs, the node agent and its client."""
