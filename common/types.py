"""Typed outputs shared by teachers, students, the engine and evaluation."""
from __future__ import annotations

from dataclasses import dataclass

import torch

# The parts of `ImageTokens`, in field order: the names of its fields, of the projection heads, of a cache's
# stored targets and of an ONNX export's outputs.
TOKEN_PARTS = ("cls", "registers", "patches")
# The primary teacher's name: a one-teacher run's only teacher, the first of several, and `STUDENT@teacher`.
PRIMARY_TEACHER = "teacher"


@dataclass
class ImageTokens:
    """Final-layer (post-norm) tokens of a ViT image encoder.

    cls:       (B, D)       first CLS token (TIPSv2: supervised by alt-text; the image embedding)
    registers: (B, R, D)    register / second-CLS tokens (TIPSv2: supervised by synthetic captions)
    patches:   (B, h, w, D) patch tokens as a grid
    """

    cls: torch.Tensor
    registers: torch.Tensor
    patches: torch.Tensor

    @property
    def grid(self) -> tuple[int, int]:
        return self.patches.shape[1], self.patches.shape[2]

    def map(self, fn) -> "ImageTokens":
        return ImageTokens(*(fn(getattr(self, name)) for name in TOKEN_PARTS))

    @staticmethod
    def cat(parts: "list[ImageTokens]") -> "ImageTokens":
        """The tokens of several batches as one batch, in order."""
        return ImageTokens(*(torch.cat([getattr(p, name) for p in parts]) for name in TOKEN_PARTS))

    @staticmethod
    def stack(rows: "list[ImageTokens]") -> "ImageTokens":
        """Per-image tokens (no batch dimension) as one batch, in order."""
        return ImageTokens(*(torch.stack([getattr(r, name) for r in rows]) for name in TOKEN_PARTS))
