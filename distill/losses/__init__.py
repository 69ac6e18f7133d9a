"""Training losses, one per module: distillation (token distances, all-token patch loss, target
standardisation), caption contrastive (InfoNCE, sigmoid, global batch), and the pretraining losses."""
