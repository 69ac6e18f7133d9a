"""TIPSv2 stage-1 pretraining meta-architecture: a `Tipsv2Model` + DINO / iBOT prototype heads + EMA.

Objective per step (TIPSv2, arXiv 2604.12012):
    caption contrastive on the two CLS tokens (CLS1 <-> alt-text, CLS2 <-> a caption sampled among the
    granularities) + alpha * DINO CLS loss over augmented views + beta * iBOT++ patch loss.
The student sees masked global views; the targets come from the unmasked global views through the EMA
heads. With `ema="heads"` the target backbone is the student backbone itself (its unmasked forward also
feeds the contrastive loss, so targets cost no extra backbone pass for view 1); with `ema="full"` a
frozen EMA copy of the vision tower produces them (TIPS v1 / iBOT).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import roi_align
from transformers import Tipsv2Model

from distill.ema import EMA_MODES, ema_copy, ema_momentum, ema_update
from distill.losses.dino_cls_loss import DinoClsLoss
from distill.losses.ibot_patch_loss import PATCH_LOSS_TOKENS, IbotPatchLoss
from teachers.tipsv2_tokens import tipsv2_tokens
from teachers.types import ImageTokens


@dataclass
class PretrainObjective:
    alpha: float = 1.0  # DINO CLS loss weight
    beta: float = 1.0  # iBOT(++) patch loss weight
    patch_loss_tokens: str = "all"  # all = iBOT++, masked = iBOT
    ema: str = "heads"  # heads = TIPSv2 head-only EMA, full = EMA backbone too
    ema_momentum: float = 0.99  # cosine-ramped to 1.0 over training
    num_prototypes: int = 256
    head_hidden: int = 256
    head_bottleneck: int = 64
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    centering: str = "center"  # center | sinkhorn
    mask_probability: float = 0.5  # fraction of global views that are masked for the student
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    local_crops: int = 2
    local_size: int = 32
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.1, 0.4)
    caption_weights: dict[str, float] = field(default_factory=lambda: {"short": 1.0, "medium": 1.0, "long": 1.0})

    def __post_init__(self):
        if self.patch_loss_tokens not in PATCH_LOSS_TOKENS:
            raise ValueError(f"patch_loss_tokens {self.patch_loss_tokens!r}; expected one of {PATCH_LOSS_TOKENS}")
        if self.ema not in EMA_MODES:
            raise ValueError(f"ema {self.ema!r}; expected one of {EMA_MODES}")


@dataclass
class PretrainOutput:
    loss: torch.Tensor
    parts: dict[str, float]


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
    aspect = torch.exp(torch.empty(b).uniform_(-0.2877, 0.2877))
    cw = (area * aspect).sqrt().clamp(max=w)
    ch = (area / aspect).sqrt().clamp(max=h)
    x0 = torch.rand(b) * (w - cw)
    y0 = torch.rand(b) * (h - ch)
    boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], dim=1)
    crops = roi_align(pixels, boxes.to(pixels), output_size=size, aligned=True)
    flip = torch.rand(b, device=pixels.device) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


def random_patch_mask(batch: int, num_patches: int, probability: float, ratio: tuple[float, float]) -> torch.Tensor:
    """(B, N) bool: a `probability` share of images get a random `ratio` of their patches masked."""
    scores = torch.rand(batch, num_patches)
    ratios = torch.empty(batch, 1).uniform_(*ratio) * (torch.rand(batch, 1) < probability)
    return scores < ratios


class TipsPretrainer(nn.Module):
    """Everything stage-1 trains (`model`, `heads`) plus the frozen EMA copies and loss state."""

    def __init__(self, model: Tipsv2Model, objective: PretrainObjective):
        super().__init__()
        self.model, self.objective = model, objective
        width, o = model.config.vision_config.hidden_size, objective
        self.heads = nn.ModuleDict({
            "dino": PrototypeHead(width, o.head_hidden, o.head_bottleneck, o.num_prototypes),
            "ibot": PrototypeHead(width, o.head_hidden, o.head_bottleneck, o.num_prototypes),
        })
        self.ema_heads = ema_copy(self.heads)
        self.ema_vision = ema_copy(model.vision_model) if o.ema == "full" else None
        self.dino_loss = DinoClsLoss(o.num_prototypes, o.student_temp, o.teacher_temp, o.centering)
        self.ibot_loss = IbotPatchLoss(o.num_prototypes, o.patch_loss_tokens, o.student_temp, o.teacher_temp,
                                       o.centering)

    # -- EMA ---------------------------------------------------------------------------------------
    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.ema_heads, self.heads)]
        if self.ema_vision is not None:
            pairs.append((self.ema_vision, self.model.vision_model))
        return pairs

    def update_ema(self, step: int, total_steps: int) -> None:
        momentum = ema_momentum(step, total_steps, self.objective.ema_momentum)
        for target, source in self.ema_pairs():
            ema_update(target, source, momentum)

    # -- objective ---------------------------------------------------------------------------------
    def image_tokens(self, pixels: torch.Tensor, mask: torch.Tensor | None = None) -> ImageTokens:
        return tipsv2_tokens(self.model.vision_model, pixels, bool_masked_pos=mask)

    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    @torch.no_grad()
    def _targets(self, pixels: torch.Tensor, tokens: ImageTokens | None) -> tuple[torch.Tensor, torch.Tensor]:
        """EMA-head scores of the unmasked view: (B, K) for CLS1 and (B, N, K) for the patches."""
        if self.ema_vision is not None:
            tokens = tipsv2_tokens(self.ema_vision, pixels)
        elif tokens is None:
            tokens = self.image_tokens(pixels)
        return self.ema_heads["dino"](tokens.cls.detach()), self.ema_heads["ibot"](tokens.patches.detach().flatten(1, 2))

    def self_distillation(self, pixels: torch.Tensor, view1_tokens: ImageTokens) -> dict[str, torch.Tensor]:
        """DINO CLS + iBOT(++) patch losses. `view1_tokens`: the student's unmasked tokens of `pixels`."""
        o = self.objective
        globals_ = [pixels, random_crops(pixels, pixels.shape[-1], o.global_crop_scale)]
        locals_ = [random_crops(pixels, o.local_size, o.local_crop_scale) for _ in range(o.local_crops)]
        teacher_cls, student_cls, patch_losses = [], [], []
        for index, view in enumerate(globals_):
            t_cls, t_patches = self._targets(view, view1_tokens if index == 0 else None)
            grid = (view.shape[-2] // self.model.config.vision_config.patch_size) ** 2
            mask = random_patch_mask(view.shape[0], grid, o.mask_probability, o.mask_ratio).to(view.device)
            tokens = self.image_tokens(view, mask)
            teacher_cls.append(t_cls)
            student_cls.append(self.heads["dino"](tokens.cls))
            patch_losses.append(self.ibot_loss(self.heads["ibot"](tokens.patches.flatten(1, 2)), t_patches, mask))
        for view in locals_:
            student_cls.append(self.heads["dino"](self.image_tokens(view).cls))
        return {"dino": self.dino_loss(student_cls, teacher_cls), "ibot": torch.stack(patch_losses).mean()}
