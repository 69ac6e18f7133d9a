"""Several students from one teacher forward (DINOv3's multi-distillation pattern), as one task.

The teacher is the expensive part of a distillation step (g/14: 1.1B parameters against B/14's 86M),
so B/14 and L/14 trained together should share it: the loop computes the targets once per batch and
this task feeds them to every student's `DistillTask`. The loss is the sum of the students' losses; as
no parameter is shared, each student's gradients are exactly those of its own run, and one optimizer
(per-parameter AdamW) steps them all.

The students see the same crop and the same mask, so they share the image size and the patch size;
target standardisation is calibrated per task and so not supported here yet (one shared statistic would
be needed). `distill.recipe_rules` refuses recipes that break either rule.
"""
from __future__ import annotations

import torch
from torch import nn

from distill.config import Recipe
from distill.data.batch import Batch
from distill.tasks import LossOutput, TeacherOutput, TrainingTask
from distill.tasks.distill_task import DistillTask


class MultiStudentTask(TrainingTask):
    def __init__(self, tasks: dict[str, DistillTask]):
        super().__init__()
        self.tasks = nn.ModuleDict(tasks)

    @classmethod
    def build(cls, recipe: Recipe, targets, dataset, contrastive: bool) -> MultiStudentTask:
        """One `DistillTask` per `students:` entry, built in recipe order, named by student."""
        return cls({s.name: DistillTask.build(recipe, targets, dataset, contrastive, entry=s)
                    for s in recipe.students})

    def students(self) -> list[nn.Module]:
        return [task.student for task in self.tasks.values()]

    def forward(self, batch: Batch, targets: TeacherOutput) -> LossOutput:
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
