"""The per-sample random draws of a training batch besides the crop, made in the data workers.

Masks (which patches the student sees replaced by its mask token), the caption each CLS token is
contrasted with, and the extra views of pretraining (a second global crop and local crops, as boxes on
the student's pixels) all come from generators keyed by (purpose, seed, epoch, sample index), like the
crop: they do not depend on the process layout, the workers or where a run was resumed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from distill.data.augment import CropConfig, sample_crop
from distill.data.captions import CaptionPair, CaptionTokenizer, caption_pair, draw_captions
from distill.data.masks import MaskConfig, sample_mask
from distill.data.rng import keyed_generator


@dataclass(frozen=True)
class Draws:
    """What to draw per sample; None / empty disables a kind (no mask is an all-False mask)."""

    mask: MaskConfig | None = None
    caption_weights: dict[str, float] | None = None  # CLS2's granularity weights; None: no captions drawn
    views: tuple[CropConfig, ...] = field(default_factory=tuple)  # extra views, as boxes on the student pixels

    def __call__(self, captions: dict[str, str], student_size: int, seed: int, epoch: int,
                 index: int) -> dict:
        item = {}
        if self.mask is not None:
            item["mask"] = sample_mask(keyed_generator("mask", seed, epoch, index), self.mask, student_size)
        if self.caption_weights is not None:
            item["caption"] = draw_captions(captions, keyed_generator("caption", seed, epoch, index),
                                            self.caption_weights)
        if self.views:
            g = keyed_generator("views", seed, epoch, index)
            item["views"] = torch.stack([sample_crop((student_size, student_size), g, view).as_tensor()
                                         for view in self.views])
        return item


def collate_draws(items: list[dict], captions: CaptionTokenizer | None = None) -> dict:
    """The batch's `mask` (B, h*w) bool, `caption_pair` (`CaptionPair`, tokenised by `captions`) and `views`
    (B, V, 5), those drawn."""
    batch = {}
    if "mask" in items[0]:
        batch["mask"] = torch.stack([item["mask"] for item in items])
    if "caption" in items[0]:
        batch["caption_pair"] = caption_pair([item["caption"] for item in items], captions)
    if "views" in items[0]:
        batch["views"] = torch.stack([item["views"] for item in items])
    return batch


__all__ = ["CaptionPair", "CaptionTokenizer", "Draws", "MaskConfig", "collate_draws"]
