"""DINO CLS loss: the student's CLS prototype scores on every view match the EMA teacher's on the other views.

Views: the student's global views are the teacher's first global views (same images; the student's may be
masked), followed by local crops that only the student sees. Each student view is paired with every
teacher view except its own global view (DINO, arXiv 2104.14294, eq. 3), and the loss is the mean over the
pairs that exist: with 1 student global view, L local crops and 2 teacher views, that is 1 + 2L pairs.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from distill.losses.prototype_targets import PrototypeTargets, cross_entropy_to_targets


class DinoClsLoss(nn.Module):
    def __init__(self, num_prototypes: int, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 centering: str = "center", center_momentum: float = 0.9):
        super().__init__()
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.targets = PrototypeTargets(num_prototypes, centering, center_momentum)

    def forward(self, student_global: list[torch.Tensor], student_local: list[torch.Tensor],
                teacher_global: list[torch.Tensor]) -> torch.Tensor:
        """Per view (B, K) scores. student_global[i] is the student's output on teacher view i
        (len(student_global) <= len(teacher_global)); student_local are crops the teacher never sees."""
        if len(student_global) > len(teacher_global):
            raise ValueError(f"{len(student_global)} student global views but only {len(teacher_global)} teacher views")
        targets = self.targets(torch.cat(teacher_global), self.teacher_temp).chunk(len(teacher_global))
        pairs = [(s, t) for s in range(len(student_global)) for t in range(len(targets)) if s != t]
        pairs += [(len(student_global) + s, t) for s in range(len(student_local)) for t in range(len(targets))]
        if not pairs:
            raise ValueError("the DINO CLS loss needs a student view paired with another teacher view")
        views = [*student_global, *student_local]
        total = sum(cross_entropy_to_targets(views[s], targets[t], self.student_temp).mean() for s, t in pairs)
        return total / len(pairs)
