"""Evaluation: zero-shot segmentation, retrieval, zero-shot classification and token fidelity, side by side."""
from distill.eval.runner import TASKS, evaluate

__all__ = ["TASKS", "evaluate"]
