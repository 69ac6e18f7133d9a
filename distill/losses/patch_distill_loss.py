"""All-token patch distillation: CLS1, CLS2 (registers) and every patch token regress onto the teacher.

The iBOT++ lesson (TIPSv2): the patch term averages over ALL patch tokens, the ones the student saw
and the ones hidden behind its mask token, since pulling visible tokens towards the teacher is what
aligns them with text. `tokens="masked"` keeps only hidden tokens (the iBOT ablation).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.config import PATCH_TOKENS
from distill.losses.token_distance import token_distance
from common.types import TOKEN_PARTS, ImageTokens



@dataclass
class PatchDistillWeights:
    cls: float = 1.0
    register: float = 1.0
    patch: float = 1.0


def patch_distill_loss(pred: ImageTokens, target: ImageTokens, mask: torch.Tensor | None, distance: str,
                       weights: PatchDistillWeights, mix: dict[str, float] | None = None,
                       tokens: str = "all", kinds: tuple[str, ...] = TOKEN_PARTS
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """pred and target on the same grid and width; mask (B, h*w) True = hidden from the student.

    Returns the weighted total and detached parts for logging (cls, register, patch, and
    patch_visible / patch_masked when a mask is given).
    """
    if tokens not in PATCH_TOKENS:
        raise ValueError(f"patch tokens {tokens!r}; expected one of {PATCH_TOKENS}")
    parts: dict[str, torch.Tensor] = {}
    # A token kind outside `kinds` (one a teacher does not supervise) is not compared, so the teacher's tokens of that
    # kind need not match the student's (a teacher without registers); it stays in the graph, multiplied by 0, so
    # every head keeps a gradient and DDP finds no unused parameter.
    cls = _part_or_zero(pred.cls, target.cls, "cls" in kinds, distance, mix, parts, "cls")
    register = _part_or_zero(pred.registers, target.registers, "registers" in kinds, distance, mix, parts, "register")
    if "patches" not in kinds:
        return weights.cls * cls + weights.register * register + 0 * pred.patches.sum(), parts
    b = pred.cls.shape[0]
    per_patch = token_distance(pred.patches, target.patches, distance, mix).reshape(b, -1)  # (B, N)
    if mask is not None:
        hidden = mask.to(per_patch.dtype)
        parts["patch_masked"] = ((per_patch * hidden).sum() / hidden.sum().clamp(min=1)).detach()
        parts["patch_visible"] = ((per_patch * (1 - hidden)).sum() / (1 - hidden).sum().clamp(min=1)).detach()
    if tokens == "all":
        patch = per_patch.mean()
    else:
        if mask is None:
            raise ValueError("patch tokens 'masked' needs a student mask (mask_ratio > 0)")
        hidden = mask.to(per_patch.dtype)
        # Per-image mean over hidden tokens, averaged over the images that have some: counting unmasked images
        # as 0 would weight the patch term by the masking probability, not by loss.patch_weight.
        masked = hidden.sum(1) > 0
        per_image = (per_patch * hidden).sum(1) / hidden.sum(1).clamp(min=1)
        patch = per_image[masked].mean() if masked.any() else (per_patch * 0).sum()
    parts["patch"] = patch.detach()
    total = weights.cls * cls + weights.register * register + weights.patch * patch
    return total, parts


def _part_or_zero(pred: torch.Tensor, target: torch.Tensor, supervised: bool, distance: str, mix, parts: dict,
                  name: str) -> torch.Tensor:
    if not supervised:
        return 0 * pred.sum()
    value = token_distance(pred, target, distance, mix).mean()
    parts[name] = value.detach()
    return value
