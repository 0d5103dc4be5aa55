"""Recovery: distill a pruned checkpoint from its source on the transformers Trainer (the `recover` extra)."""
