"""A student on disk, loaded whole (with its projection heads; `Student.save` writes it). The format and its
reading live in the teacher layer (`teachers.student_checkpoint`): a student's towers are a TIPSv2 encoder
that every command reads as a teacher."""
from __future__ import annotations

import os
from pathlib import Path

from students.heads import ProjectionHeads
from students.model import Student
from teachers.student_checkpoint import MANIFEST, WEIGHTS, check_state_dict, is_student_dir, read_student_checkpoint
from common.errors import UserError

__all__ = ["MANIFEST", "WEIGHTS", "is_student_dir", "load_student"]


def load_student(directory: str | os.PathLike) -> Student:
    checkpoint = read_student_checkpoint(directory)
    manifest, state = checkpoint.manifest, checkpoint.state
    heads = None
    if manifest.get("teacher_width") is not None:
        try:
            heads = ProjectionHeads(checkpoint.vision.config.hidden_size, manifest["teacher_width"],
                                    manifest["head_kind"])
        except (KeyError, TypeError) as exc:
            raise UserError(f"{Path(directory) / MANIFEST} describes no valid student ({exc})") from None
    student = Student(manifest["name"], checkpoint.vision, checkpoint.text, heads, tokenizer=checkpoint.tokenizer,
                      metadata=manifest.get("metadata"))
    check_state_dict(student, state, str(Path(directory) / WEIGHTS), f"student {manifest['name']!r} in {MANIFEST}")
    student.load_state_dict(state)
    return student
