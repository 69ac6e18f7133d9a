"""The frozen-teacher layer: one interface over TIPSv2 (transformers, official .npz), timm and HF encoders."""
from teachers.errors import UserError
from teachers.types import ImageTokens

__all__ = ["ImageTokens", "Teacher", "UserError", "load_teacher"]


def __getattr__(name: str):
    # Lazy: `teachers.errors` / `teachers.types` are imported everywhere and must not pull in timm/transformers.
    if name == "load_teacher":
        from teachers.load import load_teacher

        return load_teacher
    if name == "Teacher":
        from teachers.base import Teacher

        return Teacher
    raise AttributeError(f"module 'teachers' has no attribute {name!r}")
