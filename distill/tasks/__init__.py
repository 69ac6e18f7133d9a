"""Training tasks: what the loop drives (open_clip's and timm's explicit training-task objects).

A task is the one `nn.Module` that `accelerator.prepare` wraps. The loop knows only this interface:
- `task(batch, targets) -> LossOutput`: one training step's loss from a batch (the data pipeline already
  drew its crops, masks, caption pairs and extra views) and the teacher's outputs for it (`TeacherOutput`,
  from a `distill.targets` source, or None for pretraining, whose targets are the model's own);
- `after_optimizer_step(step, max_steps)`: runs after each optimizer step (pretraining's EMA update);
- `exports() -> {name: Student}`: the students to save ("" for a single one), in teacher space, and
  `export_notes()`: what to record with them;
- its state for checkpoints is its state dict (students, heads, EMA copies, target statistics).

The run (`distill.run.build_run`) also reads, before the loop:
- `Task.build(recipe, targets, dataset, contrastive)`: the task a recipe describes, its students built
  (`targets`: the target source, None for pretraining; `contrastive`: whether the caption term is on);
- `students()`: the student modules it trains, in recipe order (compiled by `train.compile`; the first one's
  tokenizer reads the captions unless the frozen teacher's text tower does);
- `target_norms()`: the target statistics (`TargetNorm`, by teacher name) that `calibrate` fills before the
  first step and the run saves; empty when the targets are used as they are;
- `desc`: its name in logs and trackers.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from distill.data.batch import Batch
from common.types import ImageTokens


@dataclass
class LossOutput:
    loss: torch.Tensor
    parts: dict[str, torch.Tensor]  # detached, for logging


@dataclass
class TeacherOutput:
    tokens: ImageTokens  # the (primary) teacher's tokens, float32, as the teacher produced them (not standardised)
    text: tuple[torch.Tensor, torch.Tensor] | None = None  # frozen teacher text tower: (CLS1, CLS2) captions
    others: dict[str, ImageTokens] = field(default_factory=dict)  # the other teachers' tokens, by name

    def by_teacher(self, primary: str) -> dict[str, ImageTokens]:
        """Every teacher's tokens by name, the primary's under `primary`."""
        return {primary: self.tokens, **self.others}


class TrainingTask(nn.Module):
    desc = "distill"

    @classmethod
    def build(cls, recipe, targets, dataset, contrastive: bool) -> TrainingTask:
        raise NotImplementedError

    def students(self) -> list[nn.Module]:
        raise NotImplementedError

    def target_norms(self) -> dict[str, nn.Module]:
        """The `TargetNorm`s to calibrate and save, by teacher name; none by default."""
        return {}

    def calibrate(self, outputs: Iterable[TeacherOutput],
                  reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Target statistics (`target_norms()`) from the teachers' outputs (float32), in one pass over the
        calibration batches, summed over processes by `reduce_sum`."""
        raise NotImplementedError

    def forward(self, batch: Batch, targets: TeacherOutput | None) -> LossOutput:
        raise NotImplementedError

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        """Nothing by default: distillation has no state outside its parameters."""

    def exports(self) -> dict:
        raise NotImplementedError

    def export_notes(self) -> dict:
        """Metadata saved with the exported students."""
        return {}
