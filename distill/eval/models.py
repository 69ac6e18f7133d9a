"""Turn a `--model` spec into a model object with the teacher interface (or pass an object through).

Every spec goes through `teachers.load_teacher` (hub ids, save_pretrained dirs, .npz pairs, timm names,
HF encoders, student checkpoints and exported students), so evaluation needs no training state.
`STUDENT_DIR@teacher` is a student read in its teacher's space: its tokens through its projection heads, and
the text tower of the teacher it was distilled from. A student narrower than its teacher cannot reuse the
teacher's text tower at its own width; AM-RADIO (arXiv 2312.06709) reads its students' zero-shot the same way,
through the adaptor head of the CLIP teacher with that teacher's text encoder.
"""
from __future__ import annotations

import hashlib
import os
import re

import torch

import teachers
from students.checkpoint import is_student_dir, load_student
from common.errors import UserError

TEACHER_SPACE = "@teacher"
ONNX = "onnx:"


def load_model(spec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    if isinstance(spec, (str, os.PathLike)):
        if str(spec).endswith(TEACHER_SPACE):
            return in_teacher_space(str(spec)[: -len(TEACHER_SPACE)], device, dtype)
        return teachers.load_teacher(str(spec), dtype=dtype, device=device)
    return spec


class InTeacherSpace:
    """A student's image tokens in its teacher's space (projection heads) and that teacher's text embeddings."""

    def __init__(self, student, teacher):
        self.space, self.teacher = student.teacher_space(), teacher
        self.width, self.patch_size = self.space.width, self.space.patch_size
        self.image_size, self.num_registers = self.space.image_size, self.space.num_registers
        self.has_text, self.tokenizer, self.temperature = True, teacher.tokenizer, teacher.temperature
        self.text = getattr(teacher, "text", None)  # the text tower, for the cost columns
        # Both halves decide every zero-shot figure: the report's fingerprint names both.
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


def in_teacher_space(spec: str, device, dtype) -> InTeacherSpace:
    """The teacher is the one the student's metadata names, checked by fingerprint: a packaged or local teacher
    that changed since the distillation would pair the heads with a text tower they never saw. The student is a
    checkpoint directory, or an ONNX export made `--with-heads` (`onnx:DIR@teacher`)."""
    form = f"{spec}{TEACHER_SPACE}"
    student = _student_side(spec, form, device, dtype)
    recorded = student.metadata.get("teacher") or {}
    if student.teacher_width is None or not recorded.get("spec"):
        raise UserError(f"{form}: the student has no projection heads or no recorded teacher; expected a student "
                        "written by `tipsdistill distill` (exported with --with-heads)")
    teacher = teachers.load_teacher(recorded["spec"], dtype=dtype, device=device)
    if recorded.get("fingerprint") and teacher.fingerprint != recorded["fingerprint"]:
        raise UserError(f"{form}: teacher {recorded['spec']!r} has fingerprint {teacher.fingerprint[:12]}, the "
                        f"student was distilled from {recorded['fingerprint'][:12]}; expected the same teacher")
    if not teacher.has_text or teacher.width != student.teacher_width:
        raise UserError(f"{form}: teacher {recorded['spec']!r} has no text tower of width {student.teacher_width}; "
                        "expected a TIPSv2-style teacher whose text meets its patch tokens")
    return InTeacherSpace(student, teacher)


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
