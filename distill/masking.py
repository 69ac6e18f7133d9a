"""Student masks: which patches the student sees replaced by its mask token (`bool_masked_pos`).

`block` masks rectangles of patches as BEiT/iBOT do (neighbouring patches hidden together, so the
student cannot fill a hole from its immediate neighbours alone); `random` masks single patches.
Each masked image hides exactly round(ratio * patches); `probability` of the images are masked.
"""
from __future__ import annotations

import math

import torch

from distill.sample_rng import sample_generator


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def _block_mask(g: torch.Generator, h: int, w: int, count: int) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
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
        new = int((~mask[top:top + bh, left:left + bw]).sum())
        if 0 < new <= remaining:
            mask[top:top + bh, left:left + bw] = True
            masked += new
    flat = mask.flatten()
    if masked < count:  # rectangles rarely tile the exact count: top up with single patches
        free = (~flat).nonzero().squeeze(1)
        flat[free[torch.randperm(len(free), generator=g)[: count - masked]]] = True
    return flat


def sample_masks(indices: torch.Tensor, step: int, seed: int, grid: tuple[int, int], ratio: float,
                 probability: float = 1.0, shape: str = "block") -> torch.Tensor | None:
    """(B,) sample indices -> (B, h*w) bool, True = hidden from the student; None when masking is off."""
    if ratio <= 0 or probability <= 0:
        return None
    h, w = grid
    count = min(round(ratio * h * w), h * w - 1)
    masks = torch.zeros(len(indices), h * w, dtype=torch.bool)
    for row, index in enumerate(indices.tolist()):
        g = sample_generator(seed, step, index, "mask")
        if torch.rand((), generator=g).item() >= probability or count == 0:
            continue
        if shape == "block":
            masks[row] = _block_mask(g, h, w, count)
        else:
            masks[row, torch.randperm(h * w, generator=g)[:count]] = True
    return masks
