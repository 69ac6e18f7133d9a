"""A tipsdistill student checkpoint (a directory with `student.json`) used as a teacher.

The student's own towers are used, at the student's width, without its projection heads: that is the
space where its patch tokens and text embeddings are aligned.
"""
from __future__ import annotations

from pathlib import Path

from teachers.tipsv2_teacher import Tipsv2Teacher


def load(directory: Path) -> Tipsv2Teacher:
    from students import load_student  # students depend on teachers, not the other way round at import time

    student = load_student(directory)
    temperature = getattr(student, "temperature", None)
    return Tipsv2Teacher(student.vision, student.text, student.tokenizer,
                         float(temperature.detach()) if temperature is not None else None)
