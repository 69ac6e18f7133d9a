"""Which caption each CLS token is contrasted with, per image and epoch (TIPS / TIPSv2).

CLS1 pairs with the web alt-text (`short`); CLS2 with one caption drawn per image and epoch from the
granularities the image has, with the recipe's weights (multi-granularity captions). Draws happen in the
data workers from keyed per-sample streams, so they do not depend on the process layout or on resuming.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CaptionPair:
    """Per image of the batch: the caption ('' when missing) and whether it exists."""

    cls1: list[str]
    cls1_valid: torch.Tensor  # (B,) bool
    cls2: list[str]
    cls2_valid: torch.Tensor  # (B,) bool


def _present(text: str | None) -> bool:
    return isinstance(text, str) and bool(text.strip())


def draw_captions(captions: dict[str, str], g: torch.Generator, weights: dict[str, float]) -> tuple[str, str]:
    """(CLS1 caption, CLS2 caption) of one image, '' where it has none."""
    short = captions.get("short")
    keys = [k for k, w in weights.items() if w > 0 and _present(captions.get(k))]
    if not keys:
        return (short if _present(short) else ""), ""
    probs = torch.tensor([weights[k] for k in keys], dtype=torch.float64)
    return (short if _present(short) else ""), captions[keys[int(torch.multinomial(probs, 1, generator=g))]]


def caption_pair(drawn: list[tuple[str, str]]) -> CaptionPair:
    cls1, cls2 = ([d[i] for d in drawn] for i in (0, 1))
    return CaptionPair(cls1, torch.tensor([bool(t) for t in cls1]), cls2, torch.tensor([bool(t) for t in cls2]))
