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
from distill.losses.patch_distill_loss import patch_distill_loss
from distill.losses.target_norm import TargetNorm
from distill.tasks import LossOutput, TeacherOutput, TrainingTask
from distill.tasks.student_setup import TeacherTerm, make_student, student_tokenizer, teacher_terms
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
    """One student, distilled from one teacher or from several at once (AM-RADIO): each teacher has its own
    projection heads on the student (`Student.heads` for the primary, the first; `Student.teacher_heads[name]`
    for the others), its own loss weights and token kinds, and its own target statistics."""

    def __init__(self, student, loss: LossConfig, *, teachers: list[TeacherTerm], contrastive: bool,
                 teacher_text_width: int | None = None):
        super().__init__()
        self.student = student
        self.loss_config = loss
        self.primary, *others = teachers
        self.norm = TargetNorm(self.primary.target_norm, self.primary.width) if self.primary.target_norm != "none" else None
        self.others = {t.name: t for t in others}
        self.teacher_norms = nn.ModuleDict({t.name: TargetNorm(t.target_norm, t.width) for t in others
                                            if t.target_norm != "none"})
        self.contrastive = (CaptionContrastive(loss.contrastive, student, teacher_text_width)
                            if contrastive else None)
        self._resize_logged: set[str] = set()

    @classmethod
    def build(cls, recipe: Recipe, targets, dataset, contrastive: bool,
              entry: StudentConfig | None = None) -> DistillTask:
        """The task for one student entry (default: the recipe's only student) on `targets`."""
        entry = entry or recipe.run_students[0]
        text = contrastive and recipe.loss.contrastive.text_tower == "student"
        tokenizer = student_tokenizer(entry, targets.tokenizer, dataset, pretraining=False) if text else None
        student = make_student(recipe, entry, teacher_width=targets.width, text=text, tokenizer=tokenizer)
        terms = teacher_terms(recipe, targets, student)
        for term in terms[1:]:
            student.add_teacher_heads(term.name, term.width, entry.head)
        teacher_text_width = targets.teacher.text.config.hidden_size if targets.text else None
        return cls(student, recipe.loss, teachers=terms, contrastive=contrastive,
                   teacher_text_width=teacher_text_width)

    def students(self) -> list[nn.Module]:
        return [self.student]

    def target_norms(self) -> dict[str, TargetNorm]:
        return {**({self.primary.name: self.norm} if self.norm is not None else {}), **self.teacher_norms}

    def calibrate(self, outputs, reduce_sum) -> None:
        norms = self.target_norms()
        stats = {name: {} for name in norms}
        for output in outputs:
            tokens = output.by_teacher(self.primary.name)
            for name, norm in norms.items():
                norm.accumulate(stats[name], tokens[name])
        for name, norm in norms.items():
            norm.finish(stats[name], reduce_sum)

    def _norm(self, teacher: str) -> TargetNorm | None:
        return self.teacher_norms[teacher] if teacher in self.teacher_norms else None

    def forward(self, batch: Batch, targets: TeacherOutput) -> LossOutput:
        """Reads `pixels`, `mask` (all False when masking is off, so the mask token always takes part in the graph
        and DDP needs no unused-parameter search) and `caption_pair`."""
        mask = batch.mask
        tokens = self.student(batch.pixels, mask)
        total, parts = self._distill(tokens, targets.tokens, self.primary, self.norm, mask)
        parts = {f"distill/{k}": v for k, v in parts.items()}
        for name, term in self.others.items():
            term_total, term_parts = self._distill(tokens, targets.others[name], term, self._norm(name), mask)
            total = total + term_total
            parts.update({f"distill/{name}/{k}": v for k, v in term_parts.items()})
        if self.contrastive is not None:
            contrastive, contrastive_parts = self.contrastive(self.student, tokens, batch.caption_pair,
                                                              targets.text)
            total = total + self.loss_config.contrastive.weight * contrastive
            parts.update(contrastive_parts)
        parts["loss"] = total.detach()
        return LossOutput(total, parts)

    def _distill(self, tokens: ImageTokens, teacher_tokens: ImageTokens, term: TeacherTerm, norm, mask):
        """One teacher's term: the student's tokens through that teacher's heads against its (standardised)
        targets, on the teacher's grid."""
        pred = self.student.project(tokens, None if term is self.primary else term.name)
        target = teacher_tokens if norm is None else norm.normalize(teacher_tokens)
        # Whenever masking is on, log masked/visible parts every step (the same keys on every process).
        loss_mask = mask if self.loss_config.mask_ratio > 0 else None
        if pred.grid != target.grid:
            if term.name not in self._resize_logged:
                log.info("student grid %s differs from the grid %s of teacher %s: resizing the student's patch tokens "
                         "bilinearly to the teacher's grid", pred.grid, target.grid, term.name)
                self._resize_logged.add(term.name)
            if loss_mask is not None:
                loss_mask = resize_mask(loss_mask, pred.grid, target.grid)
            pred = resize_grid(pred, target.grid)
        return patch_distill_loss(pred, target, loss_mask, self.loss_config.distance, term.weights,
                                  self.loss_config.mix, self.loss_config.patch_tokens, term.kinds)

    def exports(self) -> dict:
        return {"": self.student_for_export()}

    def export_notes(self) -> dict:
        folded = " (target normalisation folded in)" if self.target_norms() else ""
        return {"heads_output": "teacher space" + folded}

    def student_for_export(self):
        """The student with the target standardisation folded into its heads (they then output teacher
        space), so evaluation and export read a plain student checkpoint."""
        if not self.target_norms():
            return self.student
        exported = copy.copy(self.student)
        exported._modules = dict(self.student._modules)
        exported.heads = _folded(self.student.heads, self.norm)
        exported.teacher_heads = nn.ModuleDict({name: _folded(heads, self._norm(name))
                                                for name, heads in self.student.teacher_heads.items()})
        return exported


def _folded(heads, norm):
    """A copy of `heads` whose outputs are denormalised by `norm` (the heads themselves when there is none)."""
    if norm is None:
        return heads
    heads = copy.deepcopy(heads)
    for part in TOKEN_PARTS:
        head = getattr(heads, part)
        if isinstance(head, nn.Linear):
            setattr(heads, part, norm.fold_into(head, part))
        else:  # mlp: Sequential ending with a Linear
            head[-1] = norm.fold_into(head[-1], part)
    return heads
