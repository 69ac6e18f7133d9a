"""Recipe rules: every static check of a recipe across keys or against the registries, run on every load.

`distill.config` checks each key's value on its own; the rules here need several keys at once or the student
registry, and they run when a recipe is loaded (`distill.recipe_loader`), so a recipe that could only fail at
step 1 (or after loading a teacher) is refused before anything is written. Each is a one-line `UserError`
naming the key.
"""
from __future__ import annotations

import re

from common.types import PRIMARY_TEACHER
from distill.config import Recipe, StudentConfig, require
from students.build import student_patch_size
from students.zoo import STUDENTS
from teachers.timm_vision import is_timm_name


TEACHER_NAME = re.compile(r"[\w.-]+")


def check_rules(recipe: Recipe) -> Recipe:
    if recipe.is_pretraining:
        _pretraining(recipe)
    _teachers(recipe)
    _student_names(recipe)
    _students(recipe)
    _phases(recipe)
    _masking(recipe)
    _cache(recipe)
    _compute(recipe)
    return recipe


def patch_size(s: StudentConfig) -> int:
    """A zoo student's patch size, a timm student's feature stride (timm builds it on the meta device to tell)."""
    return student_patch_size(s.name, s.timm_kwargs, s.feature_stride)


def _student_names(recipe: Recipe) -> None:
    for i, s in enumerate([recipe.student, *recipe.students]):
        key = "student" if i == 0 else f"students[{i - 1}]"
        require(s.name in STUDENTS or is_timm_name(s.name), f"{key}.name",
                f"one of {', '.join(STUDENTS)} or timm:NAME", s.name)
        require(is_timm_name(s.name) or not (s.timm_kwargs or s.feature_stride), f"{key}.timm_kwargs/feature_stride",
                "none for a zoo student (they configure timm:NAME students)", s.name)
        patch = patch_size(s)
        require(s.image_size % patch == 0, f"{key}.image_size", f"a multiple of {s.name}'s patch size {patch}",
                s.image_size)


def _students(recipe: Recipe) -> None:
    """`students:` is self-contained (`student:` is then unused): its entries see one crop and one mask, so
    they share the image size, the patch size and the tokenizer that reads the captions."""
    if not recipe.students:
        return
    first = recipe.students[0]
    shared = patch_size(first)  # a timm student's stride is read from a model built for it: once, not per entry
    for i, s in enumerate(recipe.students[1:], 1):
        require(s.name not in [t.name for t in recipe.students[:i]], f"students[{i}].name",
                "a student not listed before it (each is trained and saved under its name)", s.name)
        require(s.image_size == first.image_size, f"students[{i}].image_size",
                f"students[0].image_size ({first.image_size}): the students share one crop", s.image_size)
        require(patch_size(s) == shared, f"students[{i}].name",
                f"a student with {first.name}'s patch size {shared}: the students share one mask",
                s.name)
        require(s.tokenizer == first.tokenizer, f"students[{i}].tokenizer",
                f"students[0].tokenizer ({first.tokenizer}): one tokenizer reads the captions", s.tokenizer)
    if len(recipe.students) > 1:
        norms = sorted({recipe.target_norm(t) for t in recipe.run_teachers} | {recipe.loss.target_norm})
        require(norms == ["none"], "loss.target_norm",
                "none (and no teacher's target_norm) when training several students at once (target statistics are "
                "calibrated per student)",
                norms)


def _teachers(recipe: Recipe) -> None:
    """`teachers:` is self-contained (`teacher:` is then unused, as `student:` beside `students:`); each entry is
    addressed by its name (heads, loss parts, cache, `student@NAME`)."""
    if recipe.teacher is not None and not recipe.teachers:
        require(recipe.teacher.name in ("", PRIMARY_TEACHER), "teacher.name",
                f"empty: the one teacher of a teacher: section is {PRIMARY_TEACHER!r} (names are for teachers: entries)",
                recipe.teacher.name)
    if not recipe.teachers:
        return
    names = []
    for i, t in enumerate(recipe.teachers):
        require(bool(TEACHER_NAME.fullmatch(t.name)) and t.name != PRIMARY_TEACHER, f"teachers[{i}].name",
                "a name of letters, digits, '_', '.' or '-' other than 'teacher' (which means the primary, the first "
                "entry, in student@teacher)", t.name)
        require(t.name not in names, f"teachers[{i}].name", "a name not given to an earlier teacher", t.name)
        require(bool(t.spec), f"teachers[{i}].spec", "a teacher (micro, a hub id, a directory, npz:..., timm:NAME)",
                t.spec)
        names.append(t.name)
    require(any(t.weight > 0 for t in recipe.teachers), "teachers", "at least one teacher with a weight > 0",
            [t.weight for t in recipe.teachers])


def _compute(recipe: Recipe) -> None:
    """The cost estimate counts every teacher's forward: a shape for each one, none for a teacher not in the run."""
    if recipe.compute is None:
        return
    others = [t.name for t in recipe.run_teachers[1:]]
    require(sorted(recipe.compute.teacher_archs) == sorted(others), "compute.teacher_archs",
            f"the shape of each teacher after the first, by name ({', '.join(others) or 'none'})",
            recipe.compute.teacher_archs)


def _masking(recipe: Recipe) -> None:
    loss = recipe.loss
    require(loss.patch_tokens != "masked" or loss.mask_ratio > 0, "loss.patch_tokens",
            "all when loss.mask_ratio is 0 (masked averages over the hidden patches, and none are hidden)",
            loss.patch_tokens)


def _cache(recipe: Recipe) -> None:
    if not recipe.cache:
        return
    c = recipe.loss.contrastive
    require(c.kind == "none" or c.text_tower == "student", "loss.contrastive.text_tower",
            "student with cache=DIR (a cache holds no teacher text tower)", c.text_tower)
    if recipe.train.resolution_phases:
        sizes = {teacher for *_, teacher in recipe.phases()}
        require(len(sizes) == 1, "train.resolution_phases", "one teacher size with cache=DIR (a cache holds the "
                "teacher's targets at the one resolution it was built at)", sorted(sizes))


def _phases(recipe: Recipe) -> None:
    previous = 0
    name = recipe.run_students[0].name
    patch = patch_size(recipe.run_students[0])
    for i, phase in enumerate(recipe.train.resolution_phases):
        key = f"train.resolution_phases[{i}]"
        require(previous < phase.from_step < recipe.train.max_steps, f"{key}.from_step",
               f"a step after the previous phase's ({previous}) and before train.max_steps", phase.from_step)
        require(phase.student_size > 0 and phase.student_size % patch == 0, f"{key}.student_size",
               f"a multiple of {name}'s patch size {patch}", phase.student_size)
        require(phase.teacher_size is None or phase.teacher_size > 0, f"{key}.teacher_size", "a positive int or null",
               phase.teacher_size)
        previous = phase.from_step


def _pretraining(recipe: Recipe) -> None:
    p, loss, c = recipe.pretrain, recipe.loss, recipe.loss.contrastive
    require(recipe.teacher is None and not recipe.teachers, "teacher", "no teacher section in a pretraining recipe "
           "(the model is its own teacher)", recipe.teacher or recipe.teachers)
    require(recipe.cache is None and not recipe.students, "cache/students", "neither in a pretraining recipe",
           recipe.cache or recipe.students)
    require(loss.target_norm == "none", "loss.target_norm", "none when pretraining (there are no teacher targets)",
           loss.target_norm)
    require(c.kind != "none" and c.text_tower == "student", "loss.contrastive",
           "a contrastive kind other than none with text_tower=student: pretraining trains its own text tower "
           "against captions", f"{c.kind}/{c.text_tower}")
    for name in ("alpha", "beta"):
        require(getattr(p, name) >= 0, f"pretrain.{name}", "a weight >= 0", getattr(p, name))
    require(0 <= p.ema_momentum < 1, "pretrain.ema_momentum", "a value in [0, 1)", p.ema_momentum)
    for name in ("num_prototypes", "head_hidden", "head_bottleneck"):
        require(getattr(p, name) >= 1, f"pretrain.{name}", "an int >= 1", getattr(p, name))
    require(p.student_temp > 0 and p.teacher_temp > 0, "pretrain.student_temp/teacher_temp", "positive temperatures",
           (p.student_temp, p.teacher_temp))
    require(p.local_crops >= 0, "pretrain.local_crops", "an int >= 0", p.local_crops)
    require(p.local_size >= 8, "pretrain.local_size", "at least 8 px", p.local_size)
