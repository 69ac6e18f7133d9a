"""Which caption each CLS token is contrasted with, per image and step (TIPS / TIPSv2).

CLS1 pairs with the web alt-text (`short`); CLS2 with one caption drawn per image and step from the
granularities the image has, with the recipe's weights (multi-granularity captions). Draws come from
per-sample streams, so they do not depend on the process layout or on resuming.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.sample_rng import sample_generator


@dataclass
class CaptionPair:
    """Per image of the batch: the caption ('' when missing) and whether it exists."""

    cls1: list[str]
    cls1_valid: torch.Tensor  # (B,) bool
    cls2: list[str]
    cls2_valid: torch.Tensor  # (B,) bool


def _present(text: str | None) -> bool:
    return isinstance(text, str) and bool(text.strip())


def sample_captions(captions: dict[str, list[str | None]], indices: torch.Tensor, step: int, seed: int,
                    weights: dict[str, float]) -> CaptionPair:
    n = len(indices)
    short = captions.get("short") or [None] * n
    cls1 = [t if _present(t) else "" for t in short]
    cls2 = []
    for row, index in enumerate(indices.tolist()):
        keys = [k for k, w in weights.items() if w > 0 and _present((captions.get(k) or [None] * n)[row])]
        if not keys:
            cls2.append("")
            continue
        probs = torch.tensor([weights[k] for k in keys], dtype=torch.float64)
        pick = int(torch.multinomial(probs, 1, generator=sample_generator(seed, step, index, "caption")))
        cls2.append(captions[keys[pick]][row])
    return CaptionPair(cls1, torch.tensor([bool(t) for t in cls1]), cls2, torch.tensor([bool(t) for t in cls2]))
