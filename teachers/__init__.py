"""The frozen-teacher layer: one interface over TIPSv2 (transformers, official .npz), timm and HF encoders."""
from teachers.base import Teacher
from teachers.load import PACKAGED, load_teacher, teacher_dtype

__all__ = ["PACKAGED", "Teacher", "load_teacher", "teacher_dtype"]
