"""iBOT / iBOT++ patch loss: the student's patch prototype scores on the masked image match the EMA
teacher's on the unmasked image.

`tokens="all"` (iBOT++, TIPSv2) averages over every patch token, visible and masked: visible tokens are
then also pulled towards the teacher, which TIPSv2 reports is what makes patches align with text.
`tokens="masked"` is the original iBOT: only masked tokens carry a loss.

Convention: the teacher targets are centred (or Sinkhorn-balanced) over ALL teacher patch tokens of the
batch, whichever tokens carry the loss, as the original iBOT code does (bytedance/ibot); DINOv2 balances
over the masked tokens only. The loss is a per-image mean over the selected tokens, then a batch mean.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from distill.config import PATCH_TOKENS
from distill.losses.prototype_targets import PrototypeTargets, cross_entropy_to_targets


class IbotPatchLoss(nn.Module):
    def __init__(self, num_prototypes: int, tokens: str = "all", student_temp: float = 0.1,
                 teacher_temp: float = 0.04, centering: str = "center", center_momentum: float = 0.9):
        super().__init__()
        if tokens not in PATCH_TOKENS:
            raise ValueError(f"patch_loss_tokens {tokens!r}; expected one of {PATCH_TOKENS}")
        self.tokens, self.student_temp, self.teacher_temp = tokens, student_temp, teacher_temp
        self.targets = PrototypeTargets(num_prototypes, centering, center_momentum)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """student_logits, teacher_logits: (B, N, K) over the N patches; mask: (B, N) bool, True = masked for the student."""
        b, n, k = student_logits.shape
        targets = self.targets(teacher_logits.reshape(b * n, k), self.teacher_temp)
        per_token = cross_entropy_to_targets(student_logits.reshape(b * n, k), targets, self.student_temp).view(b, n)
        weight = torch.ones_like(per_token) if self.tokens == "all" else mask.to(per_token.dtype)
        # Per-image mean over the selected tokens, then the batch mean (images without a selected token count 0).
        per_image = (per_token * weight).sum(1) / weight.sum(1).clamp(min=1.0)
        return per_image.mean()
