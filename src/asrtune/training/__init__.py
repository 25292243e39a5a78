"""The training recipe, its schedule and its checkpoints."""
