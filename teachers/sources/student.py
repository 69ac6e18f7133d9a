"""A tipsdistill student checkpoint (a directory with `student.json`) used as a teacher.

The student's own towers are used, at the student's width, without its projection heads: that is the
space where its patch tokens and text embeddings are aligned.
"""
from __future__ import annotations

from pathlib import Path

from teachers.base import Teacher
from teachers.student_checkpoint import read_student_checkpoint
from teachers.timm_vision import TimmVision, TimmVisionTeacher
from teachers.tipsv2_teacher import Tipsv2Teacher


def load(directory: Path) -> Teacher:
    checkpoint = read_student_checkpoint(directory)
    if isinstance(checkpoint.vision, TimmVision):  # a `timm:NAME` student: vision only
        return TimmVisionTeacher(checkpoint.vision)
    return Tipsv2Teacher(checkpoint.vision, checkpoint.text, checkpoint.tokenizer, checkpoint.temperature)
