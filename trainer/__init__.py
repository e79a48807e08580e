"""Training: towers, memory-bank projector, losses and the loop (needs the `train` extra)."""
