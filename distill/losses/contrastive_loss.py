"""InfoNCE over the global batch with multi-positive targets (identical captions are positives).

Image->text and text->image rows use soft targets spread evenly over the positives, so two images
with the same caption are not pushed apart. Samples without the caption take no row and no column.

Convention: the temperature is the trained parameter itself and divides the cosine (TIPS; CLIP trains a
log-scale that multiplies), clamped below at 1e-3 so a run cannot divide by a collapsing temperature.
"""
from __future__ import annotations

import torch

from distill.losses.global_batch import GlobalBatch


def _soft_cross_entropy(logits: torch.Tensor, positives: torch.Tensor, col_valid: torch.Tensor) -> torch.Tensor:
    """Per-row H(uniform over positives, softmax over valid columns): (n, N) -> (n,)."""
    # A large finite fill, not -inf: a row with no valid column must give zeros, not NaN gradients.
    logits = logits.masked_fill(~col_valid[None, :], -1e9)
    log_probs = torch.log_softmax(logits, dim=-1).masked_fill(~col_valid[None, :], 0.0)
    targets = positives.float() / positives.sum(1, keepdim=True).clamp(min=1)
    return -(targets * log_probs).sum(1)


def info_nce_loss(batch: GlobalBatch, temperature: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; logits = cosine / temperature (TIPS divides by the temperature)."""
    t = temperature.float().clamp(min=1e-3)
    image_to_text = _soft_cross_entropy(batch.image @ batch.all_text.T / t, batch.positives, batch.col_valid)
    text_to_image = _soft_cross_entropy(batch.text @ batch.all_image.T / t, batch.positives, batch.col_valid)
    rows = batch.row_valid.float()
    # Sum over local valid rows * world / global valid count: the DDP mean gives the global-batch mean.
    return ((image_to_text + text_to_image) * rows).sum() * batch.scale / 2
