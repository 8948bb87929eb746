"""What outlives a run: the node's state file, its history, the metrics textfile."""
