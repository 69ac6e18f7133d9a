"""DINO CLS loss: the student's CLS prototype scores on every view match the EMA teacher's on the other global views."""
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

    def forward(self, student_logits: list[torch.Tensor], teacher_logits: list[torch.Tensor]) -> torch.Tensor:
        """student_logits: per view (B, K), the global views first; teacher_logits: per global view (B, K).

        A student view is never matched to the teacher's output on the same view.
        """
        targets = self.targets(torch.cat(teacher_logits), self.teacher_temp).chunk(len(teacher_logits))
        total, pairs = 0.0, 0
        for t_index, target in enumerate(targets):
            for s_index, logits in enumerate(student_logits):
                if s_index == t_index:
                    continue
                total = total + cross_entropy_to_targets(logits, target, self.student_temp).mean()
                pairs += 1
        if pairs == 0:
            raise ValueError("the DINO CLS loss needs at least two views")
        return total / pairs
