"""Teacher-target cache: run the teacher once, store targets per augmentation, replay the crops."""
