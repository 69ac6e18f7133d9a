"""Projection heads from the student's token width to the teacher's (RADIO-style adaptors).

One head per token kind, because TIPSv2 gives CLS1 (alt-text), the register (CLS2, synthetic
captions) and the patches different jobs; the register head is shared by all registers.

Heads always exist when a teacher width is given, even when the widths match: the student's
feature space is free to drift from the teacher's, and the head absorbs that drift so the
exported backbone stays a plain TIPSv2 model. A linear head between equal widths starts as the
identity, so a student initialised from a same-size checkpoint starts exactly at its outputs.
"""
from __future__ import annotations

import torch
from torch import nn

from common.errors import UserError
from common.types import TOKEN_PARTS, ImageTokens

HEAD_KINDS = ("linear", "mlp")


def _head(kind: str, width: int, teacher_width: int) -> nn.Module:
    if kind == "linear":
        head = nn.Linear(width, teacher_width)
        if width == teacher_width:
            with torch.no_grad():
                head.weight.copy_(torch.eye(width))
                head.bias.zero_()
        return head
    if kind == "mlp":
        return nn.Sequential(nn.Linear(width, teacher_width), nn.GELU(), nn.Linear(teacher_width, teacher_width))
    raise UserError(f"projection head kind {kind!r} is unknown; expected one of {', '.join(HEAD_KINDS)}")


class ProjectionHeads(nn.Module):
    """Maps `ImageTokens` of width `width` to `teacher_width` (CLS1, registers and patches separately)."""

    def __init__(self, width: int, teacher_width: int, kind: str = "linear"):
        super().__init__()
        self.kind = kind
        self.width = width
        self.teacher_width = teacher_width
        for part in TOKEN_PARTS:  # `self.cls`, `self.registers`, `self.patches`
            setattr(self, part, _head(kind, width, teacher_width))

    def forward(self, tokens: ImageTokens) -> ImageTokens:
        return ImageTokens(*(getattr(self, part)(getattr(tokens, part)) for part in TOKEN_PARTS))
