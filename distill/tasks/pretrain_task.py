"""TIPSv2 stage-1 pretraining as a training task: a TIPSv2 backbone (a zoo `Student` with its text tower) +
DINO / iBOT prototype heads + EMA.

Objective per step (TIPSv2, arXiv 2604.12012):
    caption contrastive on the two CLS tokens (CLS1 <-> alt-text, CLS2 <-> a caption drawn among the
    granularities) + alpha * DINO CLS loss over augmented views + beta * iBOT++ patch loss.
The student sees the masked image; the targets come from the unmasked image through the EMA heads. With
`ema="heads"` the target backbone is the student backbone itself, and its unmasked forward, which the
contrastive loss needs anyway, gives the view-1 targets for free; with `ema="full"` a frozen EMA copy of
the vision tower produces them (TIPS v1 / iBOT). The extra views (a second global crop, seen by the teacher
side only, and local crops, seen by the student only) arrive as boxes drawn by the data pipeline.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import roi_align

from distill.config import LossConfig, PretrainConfig, Recipe
from distill.contrastive import CaptionContrastive
from distill.data.batch import Batch
from distill.ema import ema_copy, ema_momentum, ema_update
from distill.losses.dino_cls_loss import DinoClsLoss
from distill.losses.ibot_patch_loss import IbotPatchLoss
from distill.tasks import LossOutput, TrainingTask
from distill.tasks.student_setup import make_student, student_tokenizer
from common.errors import UserError
from teachers.tipsv2_tokens import tipsv2_tokens
from common.types import ImageTokens


class PrototypeHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> cosine scores against learned prototypes (DINO head)."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, num_prototypes: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, bottleneck) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(self.mlp(x), dim=-1), F.normalize(self.prototypes, dim=-1))


def crop_views(pixels: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(B,3,S,S) pixels and (B,5) boxes (top, left, height, width, flip; `CropParams` rows on these pixels)
    -> (B,3,size,size): bilinear resized crops (roi_align), flipped where asked."""
    top, left, height, width, flip = boxes.to(pixels.device).unbind(1)
    rois = torch.stack([torch.arange(len(boxes), device=pixels.device), left, top, left + width, top + height],
                       dim=1).to(pixels.dtype)
    crops = roi_align(pixels, rois, output_size=size, aligned=True)
    return torch.where(flip.bool()[:, None, None, None], crops.flip(-1), crops)


class PretrainTask(TrainingTask):
    """What stage 1 trains (`student` backbone + text tower, `heads`) plus the frozen EMA copies."""

    desc = "pretrain"

    def __init__(self, student, config: PretrainConfig, loss: LossConfig):
        super().__init__()
        if student.text is None or student.tokenizer is None:
            raise UserError("pretraining needs a student with a text tower and a tokenizer")
        self.student, self.pretrain, self.loss_config = student, config, loss
        self.contrastive = CaptionContrastive(loss.contrastive, student)
        c = config
        self.heads = nn.ModuleDict({
            "dino": PrototypeHead(student.width, c.head_hidden, c.head_bottleneck, c.num_prototypes),
            "ibot": PrototypeHead(student.width, c.head_hidden, c.head_bottleneck, c.num_prototypes),
        })
        self.ema_heads = ema_copy(self.heads)
        self.ema_vision = ema_copy(student.vision) if c.ema == "full" else None
        self.dino_loss = DinoClsLoss(c.num_prototypes, c.student_temp, c.teacher_temp, c.centering)
        self.ibot_loss = IbotPatchLoss(c.num_prototypes, loss.patch_tokens, c.student_temp, c.teacher_temp,
                                       c.centering)

    @classmethod
    def build(cls, recipe: Recipe, targets, dataset, contrastive: bool) -> PretrainTask:
        """The student with its text tower (the model is its own teacher: `targets` is None)."""
        s = recipe.student
        tokenizer = None if s.init else student_tokenizer(s, None, dataset, pretraining=True)
        student = make_student(recipe, s, teacher_width=None, text=True, tokenizer=tokenizer)
        return cls(student, recipe.pretrain, recipe.loss)

    def students(self) -> list[nn.Module]:
        return [self.student]

    def forward(self, batch: Batch, targets=None) -> LossOutput:
        """Reads `pixels`, `mask`, `caption_pair` (CLS1 <-> alt-text, CLS2 <-> the drawn caption) and `views`
        (B, 1 + local_crops, 5)."""
        pixels = batch.pixels
        tokens = self.student.image_tokens(pixels)
        loss, parts = self.contrastive(self.student, tokens, batch.caption_pair)
        loss = self.loss_config.contrastive.weight * loss
        if self.pretrain.alpha or self.pretrain.beta:
            sd = self.self_distillation(pixels, tokens, batch.mask, batch.views)
            loss = loss + self.pretrain.alpha * sd["dino"] + self.pretrain.beta * sd["ibot"]
            parts.update({f"pretrain/{k}": v.detach() for k, v in sd.items()})
        parts["loss"] = loss.detach()
        return LossOutput(loss, parts)

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        momentum = ema_momentum(step, max_steps, self.pretrain.ema_momentum)
        for target, source in self.ema_pairs():
            ema_update(target, source, momentum)

    def exports(self) -> dict:
        return {"": self.student}

    # -- pieces --------------------------------------------------------------------------------------
    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.ema_heads, self.heads)]
        if self.ema_vision is not None:
            pairs.append((self.ema_vision, self.student.vision))
        return pairs

    def self_distillation(self, pixels: torch.Tensor, view1_tokens: ImageTokens, mask: torch.Tensor,
                          views: torch.Tensor) -> dict[str, torch.Tensor]:
        """DINO CLS + iBOT(++) patch losses. `view1_tokens`: the student's unmasked tokens of `pixels`.

        View 1 is the image itself, view 2 the first extra view (teacher side only, for the DINO pairs), the
        other extra views are local crops (student side only). The student's masked view 1 reuses
        `view1_tokens` for the images without a mask (the same computation) and re-runs the backbone only on
        the masked ones.
        """
        c = self.pretrain
        t1_cls, t1_patches = self._targets(pixels, view1_tokens)
        t2_cls, _ = self._targets(crop_views(pixels, views[:, 0], pixels.shape[-1]), None)
        rows = mask.any(1)
        cls, patches = view1_tokens.cls, view1_tokens.patches.flatten(1, 2)
        if rows.any():
            masked = self.student.image_tokens(pixels[rows], mask[rows])
            cls, patches = cls.clone(), patches.clone()
            cls[rows], patches[rows] = masked.cls, masked.patches.flatten(1, 2)
        local_cls = [self.heads["dino"](self.student.image_tokens(crop_views(pixels, views[:, v], c.local_size)).cls)
                     for v in range(1, views.shape[1])]
        # The student's global view is teacher view 1 (masked), so it pairs with view 2 only; local crops pair with both.
        return {"dino": self.dino_loss([self.heads["dino"](cls)], local_cls, [t1_cls, t2_cls]),
                "ibot": self.ibot_loss(self.heads["ibot"](patches), t1_patches, mask)}

    @torch.no_grad()
    def _targets(self, pixels: torch.Tensor, tokens: ImageTokens | None) -> tuple[torch.Tensor, torch.Tensor]:
        """EMA-head scores of an unmasked view: (B, K) for CLS1 and (B, N, K) for the patches."""
        if self.ema_vision is not None:
            tokens = tipsv2_tokens(self.ema_vision, pixels)
        elif tokens is None:
            tokens = self.student.image_tokens(pixels)
        return (self.ema_heads["dino"](tokens.cls.detach()),
                self.ema_heads["ibot"](tokens.patches.detach().flatten(1, 2)))
