"""Turn a `--model` spec into a model object with the teacher interface (or pass an object through).

Every spec goes through `teachers.load_teacher` (hub ids, save_pretrained dirs, .npz pairs, timm names,
HF encoders, student checkpoints and exported students), so evaluation needs no training state.
`STUDENT_DIR@teacher` is a student read in its teacher's space: its tokens through its projection heads, and
the text tower of the teacher it was distilled from. A student narrower than its teacher cannot reuse the
teacher's text tower at its own width; AM-RADIO (arXiv 2312.06709) reads its students' zero-shot the same way,
through the adaptor head of the CLIP teacher with that teacher's text encoder. `STUDENT_DIR@NAME` reads a student
of several teachers in the space of the one named NAME (`@teacher`: the primary); a teacher without a text tower
(DINOv2) gives a space for the dense probes and fidelity, not for zero-shot tasks.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

import teachers
from distill.recipe_rules import TEACHER_NAME
from students.checkpoint import is_student_dir, load_student
from teachers.sources.onnx_source import CONFIG as ONNX_CONFIG
from teachers.student_checkpoint import recorded_teachers
from common.errors import UserError
from common.types import PRIMARY_TEACHER

TEACHER_SPACE = f"@{PRIMARY_TEACHER}"
ONNX = "onnx:"


def load_model(spec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    if isinstance(spec, (str, os.PathLike)):
        form = teacher_space_form(str(spec))
        if form is not None:
            return in_teacher_space(*form, device, dtype)
        return teachers.load_teacher(str(spec), dtype=dtype, device=device)
    return spec


def teacher_space_form(spec: str) -> tuple[str, str] | None:
    """(student, teacher name) of a spec that reads a student in a teacher's space, else None. `SPEC@teacher` always
    is one; `SPEC@NAME` only where SPEC is a student checkpoint or an ONNX export and the whole spec names no
    existing path, so a spec with '@' elsewhere (a directory `run@2`, `npz:a@b.npz`) loads as it did."""
    student, sep, name = spec.rpartition("@")
    if not sep or not TEACHER_NAME.fullmatch(name):
        return None
    if name == PRIMARY_TEACHER:
        return student, name
    if os.path.exists(spec.removeprefix(ONNX)):
        return None
    if is_student_dir(student) or (student.startswith(ONNX) and (Path(student[len(ONNX):]) / ONNX_CONFIG).is_file()):
        return student, name
    return None


class InTeacherSpace:
    """A student's image tokens in a teacher's space (`space`: through that teacher's projection heads) and that
    teacher's text embeddings, when it has a text tower."""

    def __init__(self, student, teacher, space, why_no_text: str | None = None):
        self.space = space
        self.width, self.patch_size = self.space.width, self.space.patch_size
        self.image_size, self.num_registers = self.space.image_size, self.space.num_registers
        self.has_text, self.tokenizer, self.temperature = teacher.has_text, teacher.tokenizer, teacher.temperature
        # A text-less teacher (DINOv2) was loaded only to check its fingerprint: its weights are not kept.
        self.teacher = teacher if teacher.has_text else None
        self.why_no_text = why_no_text  # what zero-shot tasks say when they refuse it
        self.text = getattr(self.teacher, "text", None)  # the text tower, for the cost columns
        # Both halves decide every figure in a teacher's space: the report's fingerprint names both.
        self.fingerprint = hashlib.sha256(f"{student.fingerprint}+{teacher.fingerprint}".encode()).hexdigest()
        self.student = student
        self.runtime = getattr(student, "runtime", "torch")

    def encode_image(self, pixels: torch.Tensor, value_trick: bool = False):
        return self.space.encode_image(pixels, value_trick)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.teacher.encode_text(texts)

    def parameters(self):
        """The image path's: what serves each image (the text side encodes the class names once)."""
        return self.student.parameters()

    def buffers(self):
        return self.student.buffers()


def in_teacher_space(spec: str, name: str, device, dtype) -> InTeacherSpace:
    """The teacher is the one the student's metadata records under `name` ("teacher": the primary), checked by
    fingerprint: a packaged or local teacher that changed since the distillation would pair the heads with tokens
    and a text tower they never saw. The student is a checkpoint directory, or an ONNX export made `--with-heads`
    (`onnx:DIR@NAME`)."""
    form = f"{spec}@{name}"
    student = _student_side(spec, form, device, dtype)
    records = recorded_teachers(student.metadata)
    if student.teacher_width is None or not next(iter(records.values()), {}).get("spec"):
        raise UserError(f"{form}: the student has no projection heads or no recorded teacher; expected a student "
                        "written by `tipsdistill distill` (exported with --with-heads)")
    primary = next(iter(records))
    if name != PRIMARY_TEACHER and name not in records:
        raise UserError(f"{form}: the student has no teacher {name!r}; expected one of "
                        f"{', '.join(dict.fromkeys([PRIMARY_TEACHER, *records]))}")
    recorded = records[primary if name == PRIMARY_TEACHER else name]
    teacher = teachers.load_teacher(recorded["spec"], dtype=dtype, device=device)
    if recorded.get("fingerprint") and teacher.fingerprint != recorded["fingerprint"]:
        raise UserError(f"{form}: teacher {recorded['spec']!r} has fingerprint {teacher.fingerprint[:12]}, the "
                        f"student was distilled from {recorded['fingerprint'][:12]}; expected the same teacher")
    space = student.teacher_space(None if recorded is records[primary] else name)
    if teacher.width != space.width:
        raise UserError(f"{form}: teacher {recorded['spec']!r} has width {teacher.width}, the student's heads for it "
                        f"give {space.width}; expected the teacher the heads were trained on")
    why = None if teacher.has_text else f"read in the space of teacher {name} ({recorded['spec']}), which has none"
    return InTeacherSpace(student, teacher, space, why)


def _student_side(spec: str, form: str, device, dtype):
    if spec.startswith(ONNX):
        return teachers.load_teacher(spec)  # onnxruntime on the CPU: device and dtype do not apply
    if not is_student_dir(spec):
        raise UserError(f"{form}: {spec!r} is not a student checkpoint; expected DIR{TEACHER_SPACE} with a "
                        f"student.json inside, or {ONNX}DIR{TEACHER_SPACE}")
    return load_student(spec).to(device=device, dtype=dtype).eval()


def model_device(model) -> torch.device:
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if params is not None else None
    return first.device if first is not None else torch.device("cpu")


_NAME = re.compile(r"[\w.-]+")


def parse_model_args(items: list[str]) -> dict[str, str]:
    """`NAME=SPEC`, or a bare SPEC named after its last path component (a spec may itself hold `key=value`
    items, e.g. `timm:NAME,checkpoint=PATH`, so only a plain word before the first `=` is a name)."""
    models: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not _NAME.fullmatch(name):
            name, spec = os.path.basename(os.path.normpath(item.split(",")[0])), item
        if not name or not spec:
            raise UserError(f"--model {item!r} is invalid; expected NAME=SPEC")
        if name in models:
            raise UserError(f"model name {name!r} is given twice; expected unique NAME=SPEC names")
        models[name] = spec
    return models
