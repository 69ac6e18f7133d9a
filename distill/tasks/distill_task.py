"""Distillation (DINOv2's `ssl_meta_arch` analogue): teacher targets -> student -> losses.

The student sees its (masked) view; its projected CLS1, CLS2 and every patch token regress onto the
teacher's tokens, standardised by the task's own target statistics when the recipe asks for them (buffers,
so checkpoints carry them); the caption contrastive term anchors CLS1/CLS2 to text. The teacher itself
never enters this module: its outputs arrive as `TeacherOutput` (online or from a cache).
"""
from __future__ import annotations

import copy
import logging
import torch
import torch.nn.functional as F
from torch import nn

from distill.config import LossConfig, Recipe, StudentConfig
from distill.contrastive import CaptionContrastive
from distill.data.batch import Batch
from distill.losses.patch_distill_loss import PatchDistillWeights, patch_distill_loss
from distill.losses.target_norm import TargetNorm
from distill.tasks import LossOutput, TeacherOutput, TrainingTask
from distill.tasks.student_setup import make_student, student_tokenizer
from common.types import TOKEN_PARTS, ImageTokens

log = logging.getLogger(__name__)


def resize_grid(tokens: ImageTokens, grid: tuple[int, int]) -> ImageTokens:
    """Bilinear resize of the patch grid (RADIO: the student's grid is brought to the teacher's)."""
    patches = F.interpolate(tokens.patches.permute(0, 3, 1, 2), size=grid, mode="bilinear", align_corners=False)
    return ImageTokens(tokens.cls, tokens.registers, patches.permute(0, 2, 3, 1))


def resize_mask(mask: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    resized = F.interpolate(mask.view(-1, 1, *grid).float(), size=target, mode="nearest")
    return resized.flatten(1) > 0.5


class DistillTask(TrainingTask):
    def __init__(self, student, loss: LossConfig, *, teacher_width: int, contrastive: bool,
                 teacher_text_width: int | None = None):
        super().__init__()
        self.student = student
        self.loss_config = loss
        self.weights = PatchDistillWeights(loss.cls_weight, loss.register_weight, loss.patch_weight)
        self.norm = TargetNorm(loss.target_norm, teacher_width) if loss.target_norm != "none" else None
        self.contrastive = (CaptionContrastive(loss.contrastive, student, teacher_text_width)
                            if contrastive else None)
        self._resize_logged = False

    @classmethod
    def build(cls, recipe: Recipe, targets, dataset, contrastive: bool,
              entry: StudentConfig | None = None) -> DistillTask:
        """The task for one student entry (default: the recipe's only student) on `targets`."""
        entry = entry or recipe.run_students[0]
        text = contrastive and recipe.loss.contrastive.text_tower == "student"
        tokenizer = student_tokenizer(entry, targets.tokenizer, dataset, pretraining=False) if text else None
        student = make_student(recipe, entry, teacher_width=targets.width, text=text, tokenizer=tokenizer)
        teacher_text_width = targets.teacher.text.config.hidden_size if targets.text else None
        return cls(student, recipe.loss, teacher_width=targets.width, contrastive=contrastive,
                   teacher_text_width=teacher_text_width)

    def students(self) -> list[nn.Module]:
        return [self.student]

    def forward(self, batch: Batch, targets: TeacherOutput) -> LossOutput:
        """Reads `pixels`, `mask` (all False when masking is off, so the mask token always takes part in the graph
        and DDP needs no unused-parameter search) and `caption_pair`."""
        mask = batch.mask
        tokens = self.student(batch.pixels, mask)
        pred = self.student.project(tokens)
        target = targets.tokens if self.norm is None else self.norm.normalize(targets.tokens)
        # Whenever masking is on, log masked/visible parts every step (the same keys on every process).
        loss_mask = mask if self.loss_config.mask_ratio > 0 else None
        if pred.grid != target.grid:
            if not self._resize_logged:
                log.info("student grid %s differs from the teacher grid %s: resizing the student's patch tokens "
                         "bilinearly to the teacher's grid", pred.grid, target.grid)
                self._resize_logged = True
            if loss_mask is not None:
                loss_mask = resize_mask(loss_mask, pred.grid, target.grid)
            pred = resize_grid(pred, target.grid)
        total, parts = patch_distill_loss(pred, target, loss_mask, self.loss_config.distance, self.weights,
                                          self.loss_config.mix, self.loss_config.patch_tokens)
        parts = {f"distill/{k}": v for k, v in parts.items()}
        if self.contrastive is not None:
            contrastive, contrastive_parts = self.contrastive(self.student, tokens, batch.caption_pair,
                                                              targets.text)
            total = total + self.loss_config.contrastive.weight * contrastive
            parts.update(contrastive_parts)
        parts["loss"] = total.detach()
        return LossOutput(total, parts)

    def exports(self) -> dict:
        return {"": self.student_for_export()}

    def export_notes(self) -> dict:
        return {"heads_output": "teacher space" + (" (target normalisation folded in)" if self.norm is not None else "")}

    def student_for_export(self):
        """The student with the target standardisation folded into its heads (they then output teacher
        space), so evaluation and export read a plain student checkpoint."""
        if self.norm is None:
            return self.student
        heads = copy.deepcopy(self.student.heads)
        for part in TOKEN_PARTS:
            head = getattr(heads, part)
            if isinstance(head, nn.Linear):
                setattr(heads, part, self.norm.fold_into(head, part))
            else:  # mlp: Sequential ending with a Linear
                head[-1] = self.norm.fold_into(head[-1], part)
        exported = copy.copy(self.student)
        exported._modules = dict(self.student._modules)
        exported.heads = heads
        return exported
