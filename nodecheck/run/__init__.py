"""The run pipeline: config, the isolated probe runner, the decision and its data types."""
