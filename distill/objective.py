"""The distillation objective (DINOv2's `ssl_meta_arch` analogue): teacher targets -> student -> losses.

`teacher_targets` runs the frozen teacher outside the trained module (never wrapped by DDP/FSDP);
`DistillObjective` is the one module `accelerator.prepare` wraps: the student, the contrastive
temperature/bias, the optional projection of the frozen teacher text tower, and the target
statistics (buffers, so checkpoints carry them).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distill.captions import CaptionPair
from distill.config import LossConfig
from distill.losses.contrastive_loss import info_nce_loss
from distill.losses.global_batch import caption_ids, global_batch
from distill.losses.patch_distill_loss import PatchDistillWeights, patch_distill_loss
from distill.losses.sigmoid_loss import sigmoid_loss
from distill.losses.target_norm import TargetNorm
from teachers.types import ImageTokens

log = logging.getLogger(__name__)
DEFAULT_TEMPERATURE = 0.07  # CLIP's initial temperature for a new text tower


@dataclass
class Targets:
    tokens: ImageTokens  # teacher tokens, float32, standardised when the recipe asks for it
    text_cls1: torch.Tensor | None = None  # frozen teacher text tower (text_tower=teacher), L2-normalised
    text_cls2: torch.Tensor | None = None


@dataclass
class LossOutput:
    loss: torch.Tensor
    parts: dict[str, torch.Tensor]  # detached, for logging


@torch.no_grad()
def teacher_targets(teacher, pixels: torch.Tensor, norm: TargetNorm | None = None,
                    captions: CaptionPair | None = None, teacher_text: bool = False,
                    cached: ImageTokens | None = None) -> Targets:
    """Teacher tokens as float32 loss targets (`Teacher.encode_image` already returns them outside inference mode).
    `cached`: the tokens a replayed cache batch carries; the teacher's image tower is then not run."""
    tokens = (cached if cached is not None else teacher.encode_image(pixels)).map(lambda t: t.float())
    if norm is not None:
        tokens = norm.normalize(tokens)
    if captions is None or not teacher_text:
        return Targets(tokens)
    return Targets(tokens, teacher.encode_text(captions.cls1).float().clone(),
                   teacher.encode_text(captions.cls2).float().clone())


def resize_grid(tokens: ImageTokens, grid: tuple[int, int]) -> ImageTokens:
    """Bilinear resize of the patch grid (RADIO: the student's grid is brought to the teacher's)."""
    patches = F.interpolate(tokens.patches.permute(0, 3, 1, 2), size=grid, mode="bilinear", align_corners=False)
    return ImageTokens(tokens.cls, tokens.registers, patches.permute(0, 2, 3, 1))


def resize_mask(mask: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    resized = F.interpolate(mask.view(-1, 1, *grid).float(), size=target, mode="nearest")
    return resized.flatten(1) > 0.5


class DistillObjective(nn.Module):
    def __init__(self, student, loss: LossConfig, *, teacher_width: int, contrastive: bool = False):
        super().__init__()
        self.student = student
        self.cfg = loss
        self.weights = PatchDistillWeights(loss.cls_weight, loss.register_weight, loss.patch_weight)
        self.norm = TargetNorm(loss.target_norm, teacher_width) if loss.target_norm != "none" else None
        self.contrastive = contrastive
        self._resize_logged = False
        if not contrastive:
            return
        c = loss.contrastive
        if c.text_tower == "teacher":
            self.text_projection = nn.Linear(teacher_width, student.width)
        # A trained text tower (student.init / text_init) keeps its temperature; a new one starts at CLIP's 0.07.
        pretrained = student.temperature is not None and ("init" in student.metadata or "text_init" in student.metadata)
        if c.kind == "sigmoid":
            initial = 1.0 / c.sigmoid_scale_init
            self.logit_bias = nn.Parameter(torch.tensor(float(c.sigmoid_bias_init)))
        elif c.temperature_init is not None or not pretrained:
            initial = c.temperature_init or DEFAULT_TEMPERATURE
        else:
            initial = float(student.temperature.detach())
        # A student with a text tower owns the temperature (it is exported with the model: logits = cos / T).
        if student.temperature is not None:
            with torch.no_grad():
                student.temperature.fill_(initial)
        else:
            self.temperature = nn.Parameter(torch.tensor(float(initial)))

    @property
    def contrastive_temperature(self) -> torch.Tensor:
        return self.student.temperature if self.student.temperature is not None else self.temperature

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor, targets: Targets,
                captions: CaptionPair | None = None) -> LossOutput:
        """pixels (B,3,S,S) in [0,1]; mask (B, h*w) bool (all False when masking is off, so the mask
        token always takes part in the graph and DDP needs no unused-parameter search)."""
        tokens = self.student(pixels, mask)
        pred = self.student.project(tokens)
        target = targets.tokens
        # Whenever masking is on, log masked/visible parts every step (the same keys on every process).
        loss_mask = mask if self.cfg.mask_ratio > 0 else None
        if pred.grid != target.grid:
            if not self._resize_logged:
                log.info("student grid %s differs from the teacher grid %s: resizing the student's patch tokens "
                         "bilinearly to the teacher's grid", pred.grid, target.grid)
                self._resize_logged = True
            if loss_mask is not None:
                loss_mask = resize_mask(loss_mask, pred.grid, target.grid)
            pred = resize_grid(pred, target.grid)
        total, parts = patch_distill_loss(pred, target, loss_mask, self.cfg.distance, self.weights,
                                          self.cfg.mix, self.cfg.patch_tokens)
        parts = {f"distill/{k}": v for k, v in parts.items()}
        if self.contrastive and captions is not None:
            contrastive, contrastive_parts = self._contrastive(tokens, captions, targets)
            total = total + self.cfg.contrastive.weight * contrastive
            parts.update(contrastive_parts)
        parts["loss"] = total.detach()
        return LossOutput(total, parts)

    def _text(self, captions: CaptionPair, targets: Targets) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.contrastive.text_tower == "teacher":
            return self.text_projection(targets.text_cls1), self.text_projection(targets.text_cls2)
        tokenizer = self.student.tokenizer
        batch = tokenizer(captions.cls1 + captions.cls2, padding=True, truncation=True, return_tensors="pt",
                          max_length=self.student.text.config.max_position_embeddings)
        device = self.student.vision.embeddings.cls_token.device
        text = self.student.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        return text.chunk(2)

    def _contrastive(self, tokens: ImageTokens, captions: CaptionPair,
                     targets: Targets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        text1, text2 = self._text(captions, targets)
        device = text1.device
        temperature = self.contrastive_temperature
        losses = {}
        for name, image, text, strings, valid in (
            ("cls1", tokens.cls, text1, captions.cls1, captions.cls1_valid),
            ("cls2", tokens.registers[:, 0], text2, captions.cls2, captions.cls2_valid),
        ):
            batch = global_batch(image, text, caption_ids(strings, device), valid.to(device))
            if self.cfg.contrastive.kind == "sigmoid":
                losses[name] = sigmoid_loss(batch, temperature, self.logit_bias)
            else:
                losses[name] = info_nce_loss(batch, temperature)
        loss = (losses["cls1"] + losses["cls2"]) / 2
        parts = {f"contrastive/{k}": v.detach() for k, v in losses.items()}
        parts["contrastive/temperature"] = temperature.detach().float()
        return loss, parts

    def student_for_export(self):
        """The student with the target standardisation folded into its heads (they then output teacher
        space), so evaluation and export read a plain student checkpoint."""
        if self.norm is None:
            return self.student
        heads = copy.deepcopy(self.student.heads)
        for part in ("cls", "registers", "patches"):
            head = getattr(heads, part)
            if isinstance(head, nn.Linear):
                setattr(heads, part, self.norm.fold_into(head, part))
            else:  # mlp: Sequential ending with a Linear
                head[-1] = self.norm.fold_into(head[-1], part)
        exported = copy.copy(self.student)
        exported._modules = dict(self.student._modules)
        exported.heads = heads
        return exported
