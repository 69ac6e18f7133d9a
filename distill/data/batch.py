"""The training batch: what the collate functions build (online and cached runs) and the loop, the targets and
the tasks read.

A dataclass rather than a dict, so every reader names its fields and a cached batch's targets are
`StoredTokens` (per teacher, as the cache stores them; decoded on the device by the cache's codec). It travels
like a tensor: `to` is what `accelerate.utils.send_to_device` calls on objects that have it, and `pin_memory` what
a `pin_memory=True` DataLoader calls on custom batch types.

The collate leaves the views uint8, channels-last as the resize writes them, and `to` makes them contiguous
float32 where they arrive: a quarter of the bytes through the workers' shared memory, pinning and the
host-to-device copy, and on a GPU no float32 batch is ever written by the CPU (on the CPU, writing it into fresh
pages cost more than decoding the images).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from distill.data.augment import to_float
from distill.data.captions import CaptionPair
from distill.data.sample import DataStats
from common.types import StoredTokens


@dataclass
class Batch:
    # (B,3,S,S) the student's view: uint8 channels-last as collated, contiguous float32 in [0,1] after `to`
    pixels: torch.Tensor
    teacher_pixels: torch.Tensor  # (B,3,T,T) likewise; the same tensor as `pixels` when S == T
    index: torch.Tensor  # (B,) int64 dataset indices
    crop: torch.Tensor  # (B,5) `CropParams` rows
    captions: dict[str, list[str | None]]  # {short|medium|long: per image}
    stats: DataStats  # samples drawn and data problems met in this batch
    mask: torch.Tensor | None = None  # (B, h*w) bool, True = hidden from the student
    caption_pair: CaptionPair | None = None  # the captions CLS1 and CLS2 are contrasted with
    views: torch.Tensor | None = None  # (B, V, 5) extra views (pretraining), as boxes on `pixels`
    teacher_targets: dict[str, StoredTokens] | None = None  # a cached run's targets by teacher, as stored, batched

    def map(self, fn) -> "Batch":
        """Every tensor through `fn`; `teacher_pixels` stays `pixels` when it is (one copy, not two)."""
        pixels = fn(self.pixels)
        optional = lambda value: value if value is None else value.map(fn)  # noqa: E731
        return replace(self, pixels=pixels,
                       teacher_pixels=pixels if self.teacher_pixels is self.pixels else fn(self.teacher_pixels),
                       index=fn(self.index), crop=fn(self.crop),
                       mask=None if self.mask is None else fn(self.mask),
                       views=None if self.views is None else fn(self.views),
                       caption_pair=optional(self.caption_pair),
                       teacher_targets=None if self.teacher_targets is None else {
                           name: tokens.map(fn) for name, tokens in self.teacher_targets.items()})

    def to(self, device, non_blocking: bool = False) -> "Batch":
        """On `device`, with uint8 views made float32 in [0,1] there (`to_float`: the bits a CPU conversion gives)."""
        moved = self.map(lambda t: t.to(device, non_blocking=non_blocking))
        if moved.pixels.dtype != torch.uint8:
            return moved
        pixels = to_float(moved.pixels)
        teacher = pixels if moved.teacher_pixels is moved.pixels else to_float(moved.teacher_pixels)
        return replace(moved, pixels=pixels, teacher_pixels=teacher)

    def pin_memory(self) -> "Batch":
        return self.map(torch.Tensor.pin_memory)

    def __len__(self) -> int:
        return self.pixels.shape[0]
