"""Exponential-moving-average copies for self-distillation.

TIPSv2 head-only EMA: only the projection heads keep an EMA copy and the teacher backbone IS the student
backbone (run without gradients). A full EMA (TIPS v1 / iBOT) also copies the backbone. Both are built from
the same two functions so the ablation differs in what is copied, nothing else.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


def ema_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy: its parameters are never trained, only moved by `ema_update`."""
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * source, parameter by parameter."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s.detach(), 1.0 - momentum)


def ema_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """Cosine ramp from `base` to `final` over training (the DINO schedule)."""
    progress = min(1.0, step / max(1, total_steps))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
