"""A student on disk, loaded whole (with its projection heads; `Student.save` writes it). The format and its
reading live in the teacher layer (`teachers.student_checkpoint`): a student's towers are a TIPSv2 encoder
that every command reads as a teacher."""
from __future__ import annotations

import os
from pathlib import Path

from students.heads import ProjectionHeads
from students.model import Student
from students.timm_student import TimmStudent
from teachers.student_checkpoint import MANIFEST, WEIGHTS, check_state_dict, is_student_dir, read_student_checkpoint
from common.errors import UserError
from teachers.timm_vision import TimmVision

__all__ = ["MANIFEST", "WEIGHTS", "is_student_dir", "load_student"]


def load_student(directory: str | os.PathLike) -> Student:
    checkpoint = read_student_checkpoint(directory)
    manifest, state = checkpoint.manifest, checkpoint.state
    is_timm = isinstance(checkpoint.vision, TimmVision)
    heads = None
    if manifest.get("teacher_width") is not None:
        try:
            width = checkpoint.vision.width if is_timm else checkpoint.vision.config.hidden_size
            heads = ProjectionHeads(width, manifest["teacher_width"], manifest["head_kind"])
        except (KeyError, TypeError) as exc:
            raise UserError(f"{Path(directory) / MANIFEST} describes no valid student ({exc})") from None
    if is_timm:
        student = TimmStudent(manifest["name"], checkpoint.vision, heads, metadata=manifest.get("metadata"))
    else:
        student = Student(manifest["name"], checkpoint.vision, checkpoint.text, heads, tokenizer=checkpoint.tokenizer,
                          metadata=manifest.get("metadata"))
    for name, head in (manifest.get("teacher_heads") or {}).items():
        try:
            student.add_teacher_heads(name, head["teacher_width"], head["head_kind"])
        except (KeyError, TypeError) as exc:
            raise UserError(f"{Path(directory) / MANIFEST} describes no valid heads for teacher {name!r} ({exc})") from None
    check_state_dict(student, state, str(Path(directory) / WEIGHTS), f"student {manifest['name']!r} in {MANIFEST}")
    student.load_state_dict(state)
    return student
