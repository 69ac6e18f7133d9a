"""Which caption each CLS token is contrasted with, per image and epoch (TIPS / TIPSv2).

CLS1 pairs with the web alt-text (`short`); CLS2 with one caption drawn per image and epoch from the
granularities the image has, with the recipe's weights (multi-granularity captions). Draws happen in the
data workers from keyed per-sample streams, so they do not depend on the process layout or on resuming.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from teachers.tokenizer import TextTokenizer


@dataclass
class CaptionPair:
    """Per image of the batch: the caption ('' when missing) and whether it exists, and the captions as the text
    tower that reads them takes them (`CaptionTokenizer`; None when the loader was given no tokenizer)."""

    cls1: list[str]
    cls1_valid: torch.Tensor  # (B,) bool
    cls2: list[str]
    cls2_valid: torch.Tensor  # (B,) bool
    tokens: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None  # (CLS1, CLS2)

    def map(self, fn) -> "CaptionPair":
        """Every tensor through `fn` (e.g. to the device)."""
        tokens = self.tokens and tuple({k: fn(v) for k, v in part.items()} for part in self.tokens)
        return CaptionPair(self.cls1, fn(self.cls1_valid), self.cls2, fn(self.cls2_valid), tokens)


@dataclass(frozen=True)
class CaptionTokenizer:
    """Tokenises a batch's caption pair in the data workers, as open_clip tokenises in its dataset transform
    (open_clip `training/data.py`), so the main process only runs the text tower."""

    text: TextTokenizer
    # One padded width for the CLS1 and CLS2 captions: the student's text tower reads both in one forward. The
    # frozen teacher's reads each list alone (its `encode_text`), each padded to its own longest caption.
    joint: bool = False

    def __call__(self, cls1: list[str], cls2: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if not self.joint:
            return self.text(cls1), self.text(cls2)
        both, n = self.text(cls1 + cls2), len(cls1)
        return {k: v[:n] for k, v in both.items()}, {k: v[n:] for k, v in both.items()}


def _present(text: str | None) -> bool:
    return isinstance(text, str) and bool(text.strip())


def draw_captions(captions: dict[str, str], g: torch.Generator, weights: dict[str, float]) -> tuple[str, str]:
    """(CLS1 caption, CLS2 caption) of one image, '' where it has none."""
    short = captions.get("short")
    cls1 = short if _present(short) else ""
    keys = [k for k, w in weights.items() if w > 0 and _present(captions.get(k))]
    if not keys:
        return cls1, ""
    if len(keys) == 1:  # `g` serves this draw alone, so skipping it (it costs ~50 us) changes no other draw
        return cls1, captions[keys[0]]
    probs = torch.tensor([weights[k] for k in keys], dtype=torch.float64)
    return cls1, captions[keys[int(torch.multinomial(probs, 1, generator=g))]]


def caption_pair(drawn: list[tuple[str, str]], tokenizer: CaptionTokenizer | None = None) -> CaptionPair:
    cls1, cls2 = ([d[i] for d in drawn] for i in (0, 1))
    return CaptionPair(cls1, torch.tensor([bool(t) for t in cls1]), cls2, torch.tensor([bool(t) for t in cls2]),
                       tokenizer(cls1, cls2) if tokenizer is not None else None)
