"""The frozen-teacher layer: one interface over TIPSv2 (transformers, official .npz), timm and HF encoders."""
from teachers.errors import UserError
from teachers.types import ImageTokens

__all__ = ["ImageTokens", "Teacher", "UserError", "load_teacher", "teacher_dtype"]


def __getattr__(name: str):
    # Lazy: `teachers.errors` / `teachers.types` are imported everywhere and must not pull in timm/transformers.
    if name in ("load_teacher", "teacher_dtype"):
        import teachers.load

        return getattr(teachers.load, name)
    if name == "Teacher":
        from teachers.base import Teacher

        return Teacher
    raise AttributeError(f"module 'teachers' has no attribute {name!r}")
