"""TIPSv2 stage-1 pretraining objective: a TIPSv2 backbone (a zoo `Student` with its text tower) +
DINO / iBOT prototype heads + EMA.

Objective per step (TIPSv2, arXiv 2604.12012):
    caption contrastive on the two CLS tokens (CLS1 <-> alt-text, CLS2 <-> a caption sampled among the
    granularities) + alpha * DINO CLS loss over augmented views + beta * iBOT++ patch loss.
The student sees the masked image; the targets come from the unmasked image through the EMA heads. With
`ema="heads"` the target backbone is the student backbone itself, and its unmasked forward, which the
contrastive loss needs anyway, gives the view-1 targets for free; with `ema="full"` a frozen EMA copy of
the vision tower produces them (TIPS v1 / iBOT).

`TipsPretrainer` has the call signature of `distill.objective.DistillObjective` (pixels, mask, targets,
captions) -> LossOutput: a loop drives it as `distill.train` drives distillation, except that it passes
no teacher targets and calls `after_optimizer_step` (the EMA update) after each optimizer step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import roi_align

from distill.captions import CaptionPair
from distill.config import LossConfig
from distill.ema import ema_copy, ema_momentum, ema_update
from distill.losses.dino_cls_loss import DinoClsLoss
from distill.losses.ibot_patch_loss import IbotPatchLoss
from distill.objective import DistillObjective, LossOutput
from teachers.errors import UserError
from teachers.tipsv2_tokens import tipsv2_tokens
from teachers.types import ImageTokens


@dataclass
class PretrainConfig:
    """The `pretrain:` recipe section. Masking (`loss.mask_ratio`, ...), the iBOT++/iBOT switch
    (`loss.patch_tokens: all|masked`) and caption weights (`loss.contrastive`) are the distill keys."""

    alpha: float = 1.0  # DINO CLS loss weight
    beta: float = 1.0  # iBOT(++) patch loss weight
    ema: Literal["heads", "full"] = "heads"  # heads = TIPSv2 head-only EMA, full = EMA backbone too
    ema_momentum: float = 0.99  # cosine-ramped to 1.0 over training
    num_prototypes: int = 128
    head_hidden: int = 128
    head_bottleneck: int = 64
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    centering: Literal["center", "sinkhorn"] = "center"
    local_crops: int = 1
    local_size: int = 32
    global_crop_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_crop_scale: list[float] = field(default_factory=lambda: [0.1, 0.4])

    def __post_init__(self):
        for name in ("alpha", "beta"):
            if getattr(self, name) < 0:
                raise UserError(f"recipe key 'pretrain.{name}' is {getattr(self, name)}; expected a weight >= 0")
        if not 0 <= self.ema_momentum < 1:
            raise UserError(f"recipe key 'pretrain.ema_momentum' is {self.ema_momentum}; expected a value in [0, 1)")
        if self.local_crops < 0 or self.local_size < 8:
            raise UserError(f"recipe keys 'pretrain.local_crops/local_size' are {self.local_crops}/{self.local_size};"
                            " expected >= 0 crops of >= 8 px")


class PrototypeHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> cosine scores against learned prototypes (DINO head)."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, num_prototypes: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, bottleneck) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(self.mlp(x), dim=-1), F.normalize(self.prototypes, dim=-1))


def random_crops(pixels: torch.Tensor, size: int, scale: tuple[float, float]) -> torch.Tensor:
    """Batched random-resized crops (aspect 3/4..4/3) with random horizontal flips, bilinear via roi_align."""
    b, _, h, w = pixels.shape
    area = torch.empty(b).uniform_(*scale) * h * w
    aspect = torch.exp(torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3)))
    cw = (area * aspect).sqrt().clamp(max=w)
    ch = (area / aspect).sqrt().clamp(max=h)
    x0 = torch.rand(b) * (w - cw)
    y0 = torch.rand(b) * (h - ch)
    boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], dim=1)
    crops = roi_align(pixels, boxes.to(pixels), output_size=size, aligned=True)
    flip = torch.rand(b, device=pixels.device) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


class TipsPretrainer(DistillObjective):
    """What stage 1 trains (`student` backbone + text tower, `heads`) plus the frozen EMA copies.

    A `DistillObjective` without a teacher: it reuses its caption contrastive loss (InfoNCE or sigmoid
    over the global batch, temperature owned by the student) and its export, and replaces the
    teacher-token regression by the self-distillation losses.
    """

    def __init__(self, student, config: PretrainConfig, loss: LossConfig):
        if student.text is None or student.tokenizer is None:
            raise UserError("pretraining needs a student with a text tower and a tokenizer")
        if loss.target_norm != "none" or loss.contrastive.text_tower != "student" or loss.contrastive.kind == "none":
            raise UserError("pretraining trains its own text tower contrastively: expected loss.target_norm=none, "
                            "loss.contrastive.text_tower=student and a contrastive kind other than none")
        super().__init__(student, loss, teacher_width=student.width, contrastive=True)
        self.config = c = config
        self.heads = nn.ModuleDict({
            "dino": PrototypeHead(student.width, c.head_hidden, c.head_bottleneck, c.num_prototypes),
            "ibot": PrototypeHead(student.width, c.head_hidden, c.head_bottleneck, c.num_prototypes),
        })
        self.ema_heads = ema_copy(self.heads)
        self.ema_vision = ema_copy(student.vision) if c.ema == "full" else None
        self.dino_loss = DinoClsLoss(c.num_prototypes, c.student_temp, c.teacher_temp, c.centering)
        self.ibot_loss = IbotPatchLoss(c.num_prototypes, loss.patch_tokens, c.student_temp, c.teacher_temp,
                                       c.centering)

    # -- the loop's interface ----------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor, mask: torch.Tensor, targets=None,
                captions: CaptionPair | None = None) -> LossOutput:
        """pixels (B,3,S,S) in [0,1]; mask (B, h*w) bool, True = hidden from the student; `targets` unused
        (the targets are the model's own); captions: CLS1 <-> alt-text, CLS2 <-> the sampled caption."""
        if captions is None:
            raise UserError("pretraining needs captions: the data has none (the contrastive loss is the text anchor)")
        tokens = self.student.image_tokens(pixels)
        loss, parts = self._contrastive(tokens, captions, targets)
        loss = self.cfg.contrastive.weight * loss
        if self.config.alpha or self.config.beta:
            sd = self.self_distillation(pixels, tokens, mask)
            loss = loss + self.config.alpha * sd["dino"] + self.config.beta * sd["ibot"]
            parts.update({f"pretrain/{k}": v.detach() for k, v in sd.items()})
        parts["loss"] = loss.detach()
        return LossOutput(loss, parts)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        momentum = ema_momentum(step, total_steps, self.config.ema_momentum)
        for target, source in self.ema_pairs():
            ema_update(target, source, momentum)

    # -- pieces --------------------------------------------------------------------------------------
    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.ema_heads, self.heads)]
        if self.ema_vision is not None:
            pairs.append((self.ema_vision, self.student.vision))
        return pairs

    def self_distillation(self, pixels: torch.Tensor, view1_tokens: ImageTokens,
                          mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """DINO CLS + iBOT(++) patch losses. `view1_tokens`: the student's unmasked tokens of `pixels`.

        View 1 is the image itself, view 2 a random global crop (teacher side only, for the DINO pairs),
        plus local crops (student side only). The student's masked view 1 reuses `view1_tokens` for the
        images without a mask (the same computation) and re-runs the backbone only on the masked ones.
        """
        c = self.config
        t1_cls, t1_patches = self._targets(pixels, view1_tokens)
        t2_cls, _ = self._targets(random_crops(pixels, pixels.shape[-1], tuple(c.global_crop_scale)), None)
        rows = mask.any(1)
        cls, patches = view1_tokens.cls, view1_tokens.patches.flatten(1, 2)
        if rows.any():
            masked = self.student.image_tokens(pixels[rows], mask[rows])
            cls, patches = cls.clone(), patches.clone()
            cls[rows], patches[rows] = masked.cls, masked.patches.flatten(1, 2)
        local_cls = []
        for _ in range(c.local_crops):
            local = random_crops(pixels, c.local_size, tuple(c.local_crop_scale))
            local_cls.append(self.heads["dino"](self.student.image_tokens(local).cls))
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
