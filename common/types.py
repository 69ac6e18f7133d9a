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


@dataclass
class StoredTokens:
    """`ImageTokens` as a teacher-target cache stores them: `cls` and `registers` in the storage dtype, the patch grid
    as its codec's tensors (`patches`, or `patches.int8` + `patches.scale`, or `patches.pca`). A cached run's
    batches carry them so (a half to a twelfth of the float32 bytes through the workers and to the device) and the
    codec decodes them where the batch arrives (`PatchCodec.tokens`)."""

    cls: torch.Tensor
    registers: torch.Tensor
    patches: dict[str, torch.Tensor]

    def map(self, fn) -> "StoredTokens":
        return StoredTokens(fn(self.cls), fn(self.registers), {key: fn(t) for key, t in self.patches.items()})

    @staticmethod
    def stack(rows: "list[StoredTokens]") -> "StoredTokens":
        """Per-image rows (no batch dimension) as one batch, in order."""
        return StoredTokens(torch.stack([r.cls for r in rows]), torch.stack([r.registers for r in rows]),
                            {key: torch.stack([r.patches[key] for r in rows]) for key in rows[0].patches})
