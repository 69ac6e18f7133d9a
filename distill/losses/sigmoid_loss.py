"""SigLIP's pairwise sigmoid loss over the global batch (the default for SO400m), multi-positive.

Every (image, caption) pair is an independent binary problem: label +1 when the captions are equal
strings, -1 otherwise; normalised by the number of images as in SigLIP. As in the InfoNCE loss, the
logit scale is 1 / temperature, the temperature a trained divisor clamped below at 1e-3.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses.global_batch import GlobalBatch


def sigmoid_loss(batch: GlobalBatch, temperature: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    logits = batch.image @ batch.all_text.T / temperature.float().clamp(min=1e-3) + bias.float()
    labels = batch.positives.float() * 2 - 1
    pairs = (batch.row_valid[:, None] & batch.col_valid[None, :]).float()
    # Image rows cover every pair once; sum * world / global valid count is SigLIP's per-image mean under DDP.
    return (-F.logsigmoid(labels * logits) * pairs).sum() * batch.scale
