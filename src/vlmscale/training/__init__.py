"""Training a cell: the two-stage loop, DeepSpeed and process groups, checkpoints."""
