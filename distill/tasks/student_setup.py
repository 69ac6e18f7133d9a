"""The students a task trains, built from the recipe's `student:` / `students:` entries."""
from __future__ import annotations

from dataclasses import dataclass

from common.types import PRIMARY_TEACHER, TOKEN_PARTS
from distill.config import LossConfig, Recipe, StudentConfig
from distill.losses.patch_distill_loss import PatchDistillWeights
from distill.data.scenes import SceneDataset, caption_corpus
from students import build_student
from common.errors import UserError
from teachers.tokenizer import build_tokenizer, load_tokenizer

# A pretraining run on the built-in scenes without a tokenizer builds one from their captions.
TOKENIZER_VOCAB = 256
TOKENIZER_CORPUS_SCENES = 2000


def student_tokenizer(s: StudentConfig, fallback, dataset, pretraining: bool):
    """The student text tower's tokenizer: `student.tokenizer`, else the teacher's (or the cache's copy);
    a pretraining run on the built-in scenes builds one from their captions."""
    if s.tokenizer:
        return load_tokenizer(s.tokenizer)
    if fallback is not None:
        return fallback
    if pretraining and isinstance(dataset, SceneDataset):
        return build_tokenizer(caption_corpus(TOKENIZER_CORPUS_SCENES, seed=dataset.seed, size=dataset.size),
                               vocab_size=TOKENIZER_VOCAB)
    return None


def make_student(recipe: Recipe, s: StudentConfig, *, teacher_width: int | None, text: bool, tokenizer):
    student = build_student(s.name, teacher_width=teacher_width, text=text, init=s.init, text_init=s.text_init,
                            image_size=s.image_size, tokenizer=tokenizer if text else None, head=s.head,
                            gradient_checkpointing=recipe.train.gradient_checkpointing, timm_kwargs=s.timm_kwargs,
                            feature_stride=s.feature_stride)
    if text and student.tokenizer is None:
        raise UserError("the student's text tower needs a tokenizer: set student.tokenizer=DIR, student.init / "
                        "student.text_init, or use a teacher (or cache) with a tokenizer")
    return student


@dataclass(frozen=True)
class TeacherTerm:
    """One teacher's part of a student's distillation loss."""

    name: str
    width: int
    weights: PatchDistillWeights  # loss.*_weight x the teacher's weight
    kinds: tuple[str, ...]  # the token kinds it supervises
    target_norm: str  # none, channel or phi-s


def teacher_terms(recipe: Recipe, targets, student) -> list[TeacherTerm]:
    """The recipe's teachers (the primary first) as loss terms for `student`. A teacher whose register tokens
    cannot be matched to the student's is refused before any step runs."""
    sources, loss = targets.teachers(), recipe.loss
    terms = []
    for i, t in enumerate(recipe.run_teachers):
        source = sources[t.name]
        key = f"teachers[{i}]" if recipe.teachers else "teacher"
        if "registers" in t.tokens and source.num_registers != student.num_registers:
            raise UserError(f"{key} {t.name!r} has {source.num_registers} register tokens, student {student.name} has "
                            f"{student.num_registers}; expected equal counts or {key}.tokens without registers "
                            "(e.g. [cls, patches])")
        terms.append(teacher_term(loss, source.width, t.name, t.weight, tuple(t.tokens), recipe.target_norm(t)))
    return terms


def teacher_term(loss: LossConfig, width: int, name: str = PRIMARY_TEACHER, weight: float = 1.0,
                 kinds: tuple[str, ...] = TOKEN_PARTS, target_norm: str | None = None) -> TeacherTerm:
    """A teacher's term from the loss section (default: the one teacher of a `teacher:` recipe)."""
    weights = PatchDistillWeights(loss.cls_weight * weight, loss.register_weight * weight, loss.patch_weight * weight)
    return TeacherTerm(name, width, weights, kinds, target_norm or loss.target_norm)
