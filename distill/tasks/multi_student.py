"""Several students from one teacher forward (DINOv3's multi-distillation pattern), as one task.

The teacher is the expensive part of a distillation step (g/14: 1.1B parameters against B/14's 86M),
so B/14 and L/14 trained together should share it: the loop computes the targets once per batch and
this task feeds them to every student's `DistillTask`. The loss is the sum of the students' losses; as
no parameter is shared, each student's gradients are exactly those of its own run, and one optimizer
(per-parameter AdamW) steps them all.

The students see the same crop and the same mask, so they share the image size and the patch size;
target standardisation is calibrated per task and so not supported here yet (one shared statistic would
be needed).
"""
from __future__ import annotations

import torch
from torch import nn

from distill.tasks import LossOutput, TeacherOutput, TrainingTask
from distill.tasks.distill_task import DistillTask
from common.errors import UserError


class MultiStudentTask(TrainingTask):
    def __init__(self, tasks: dict[str, DistillTask]):
        super().__init__()
        if len(tasks) < 2:
            raise UserError(f"students: {len(tasks)} given; list two or more (or use student: for one)")
        patch_sizes = {name: t.student.patch_size for name, t in tasks.items()}
        if len(set(patch_sizes.values())) > 1:
            raise UserError(f"students {patch_sizes} have different patch sizes; the students of one run share "
                            "the crop and the mask, so they need one patch size")
        if any(t.norm is not None for t in tasks.values()):
            raise UserError("loss.target_norm must be none when training several students at once")
        self.tasks = nn.ModuleDict(tasks)

    def forward(self, batch: dict, targets: TeacherOutput) -> LossOutput:
        total, parts = 0.0, {}
        for name, task in self.tasks.items():
            out = task(batch, targets)
            total = total + out.loss
            parts.update({f"{name}/{key}": value for key, value in out.parts.items()})
        parts["loss"] = total.detach() if isinstance(total, torch.Tensor) else torch.tensor(total)
        return LossOutput(total, parts)

    def exports(self) -> dict:
        return {name: task.student_for_export() for name, task in self.tasks.items()}

    def export_notes(self) -> dict:
        return next(iter(self.tasks.values())).export_notes()
