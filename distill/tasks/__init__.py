"""Training tasks: what the loop drives (open_clip's and timm's explicit training-task objects).

A task is the one `nn.Module` that `accelerator.prepare` wraps. The loop knows only this interface:
- `task(batch, targets) -> LossOutput`: one training step's loss from a batch (the data pipeline already
  drew its crops, masks, caption pairs and extra views) and the teacher's outputs for it (`TeacherOutput`,
  from a `distill.targets` source, or None for pretraining, whose targets are the model's own);
- `after_optimizer_step(step, max_steps)`: runs after each optimizer step (pretraining's EMA update);
- `exports() -> {name: Student}`: the students to save ("" for a single one), in teacher space, and
  `export_notes()`: what to record with them;
- its state for checkpoints is its state dict (students, heads, EMA copies, target statistics).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.types import ImageTokens


@dataclass
class LossOutput:
    loss: torch.Tensor
    parts: dict[str, torch.Tensor]  # detached, for logging


@dataclass
class TeacherOutput:
    tokens: ImageTokens  # the teacher's tokens, float32, as the teacher produced them (not standardised)
    text: tuple[torch.Tensor, torch.Tensor] | None = None  # frozen teacher text tower: (CLS1, CLS2) captions


class TrainingTask(nn.Module):
    def forward(self, batch: dict, targets: TeacherOutput | None) -> LossOutput:
        raise NotImplementedError

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        """Nothing by default: distillation has no state outside its parameters."""

    def exports(self) -> dict:
        raise NotImplementedError

    def export_notes(self) -> dict:
        """Metadata saved with the exported students."""
        return {}
