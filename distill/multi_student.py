"""Several students from one teacher forward (DINOv3's multi-distillation pattern), in one module.

The teacher is the expensive part of a distillation step (g/14: 1.1B parameters against B/14's 86M),
so B/14 and L/14 trained together should share it: the loop computes the targets once per batch and
this module feeds them to every student's `DistillObjective`. The loss is the sum of the students'
losses; as no parameter is shared, each student's gradients are exactly those of its own run, and
one optimizer (per-parameter AdamW) steps them all.

A thin layer over `DistillObjective`: the students see the same crop and the same mask, so they must
share the image size and the patch size; target standardisation is calibrated per objective and so
not supported here yet (one shared statistic would be needed).
"""
from __future__ import annotations

import torch
from torch import nn

from distill.objective import DistillObjective, LossOutput, Targets
from teachers.errors import UserError


class MultiStudentObjective(nn.Module):
    def __init__(self, objectives: dict[str, DistillObjective]):
        super().__init__()
        if len(objectives) < 2:
            raise UserError(f"students: {len(objectives)} given; list two or more (or use student: for one)")
        patch_sizes = {name: o.student.patch_size for name, o in objectives.items()}
        if len(set(patch_sizes.values())) > 1:
            raise UserError(f"students {patch_sizes} have different patch sizes; the students of one run share "
                            "the crop and the mask, so they need one patch size")
        if any(o.norm is not None for o in objectives.values()):
            raise UserError("loss.target_norm must be none when training several students at once")
        self.objectives = nn.ModuleDict(objectives)
        first = next(iter(objectives.values()))
        self.norm = None
        self.contrastive = first.contrastive

    @property
    def student(self):
        """The first student: what the loop reads for the shared patch grid."""
        return next(iter(self.objectives.values())).student

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor, targets: Targets, captions=None) -> LossOutput:
        total, parts = 0.0, {}
        for name, objective in self.objectives.items():
            out = objective(pixels, mask, targets, captions)
            total = total + out.loss
            parts.update({f"{name}/{key}": value for key, value in out.parts.items()})
        parts["loss"] = total.detach()
        return LossOutput(total, parts)

    def students_for_export(self) -> dict:
        return {name: objective.student_for_export() for name, objective in self.objectives.items()}
