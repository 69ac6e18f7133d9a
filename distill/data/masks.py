"""Student masks: which patches the student sees replaced by its mask token (`bool_masked_pos`).

`block` masks rectangles of patches as BEiT/iBOT do (neighbouring patches hidden together, so the
student cannot fill a hole from its immediate neighbours alone); `random` masks single patches.
Each masked image hides exactly round(ratio * patches); `probability` of the images are masked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def _block_mask(g: torch.Generator, h: int, w: int, count: int) -> torch.Tensor:
    # The bookkeeping is numpy's: on a 16x16 grid each torch op costs more than the draws themselves.
    mask = np.zeros((h, w), dtype=bool)
    masked = 0
    for _ in range(10 * count):
        remaining = count - masked
        if remaining <= 0:
            break
        area = _uniform(g, min(4, remaining), remaining)
        aspect = math.exp(_uniform(g, math.log(0.3), math.log(1 / 0.3)))
        bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if not (0 < bh <= h and 0 < bw <= w):
            continue
        top = int(torch.randint(h - bh + 1, (), generator=g))
        left = int(torch.randint(w - bw + 1, (), generator=g))
        block = mask[top:top + bh, left:left + bw]
        new = block.size - int(np.count_nonzero(block))
        if 0 < new <= remaining:
            block[...] = True
            masked += new
    flat = mask.reshape(-1)
    if masked < count:  # rectangles rarely tile the exact count: top up with single patches
        free = np.flatnonzero(~flat)
        flat[free[torch.randperm(len(free), generator=g)[: count - masked].numpy()]] = True
    return torch.from_numpy(flat)


@dataclass(frozen=True)
class MaskConfig:
    patch_size: int  # the student's: its patch grid follows the view size
    ratio: float  # fraction of patches hidden in a masked image
    probability: float = 1.0  # fraction of images that are masked
    shape: str = "block"  # block | random


def sample_mask(g: torch.Generator, config: MaskConfig, size: int) -> torch.Tensor:
    """(h*w,) bool for a `size` px square view, True = hidden from the student; all False for the images left
    unmasked."""
    h = w = size // config.patch_size
    count = min(round(config.ratio * h * w), h * w - 1)
    if torch.rand((), generator=g).item() >= config.probability or count <= 0:
        return torch.zeros(h * w, dtype=torch.bool)
    if config.shape == "block":
        return _block_mask(g, h, w, count)
    mask = torch.zeros(h * w, dtype=torch.bool)
    mask[torch.randperm(h * w, generator=g)[:count]] = True
    return mask
