"""Per-token distances between student predictions and teacher targets: cosine, smooth-L1, MSE, a mix.

Computed in float32 whatever the autocast dtype, and reduced over the channel dim only, so callers
choose how tokens are averaged (all tokens, masked ones, per token kind).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.config import DISTANCES



def _single(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(pred, target, dim=-1, eps=1e-6)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, reduction="none").mean(-1)
    if kind == "mse":
        return F.mse_loss(pred, target, reduction="none").mean(-1)
    raise ValueError(f"unknown distance {kind!r}; expected one of {DISTANCES} or 'mix'")


def token_distance(pred: torch.Tensor, target: torch.Tensor, kind: str,
                   mix: dict[str, float] | None = None) -> torch.Tensor:
    """(..., D), (..., D) -> (...). `mix` weights the distances when kind == 'mix' (RADIO: 0.9 cos + 0.1 sL1)."""
    pred, target = pred.float(), target.float()
    if kind != "mix":
        return _single(pred, target, kind)
    return sum(w * _single(pred, target, k) for k, w in (mix or {}).items() if w)
