"""The frozen-teacher layer: one interface over TIPSv2 (transformers, official .npz), timm and HF encoders."""
from teachers.errors import UserError
from teachers.types import ImageTokens

__all__ = ["ImageTokens", "UserError"]
