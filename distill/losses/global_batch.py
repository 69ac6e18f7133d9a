"""The global contrastive batch: gather embeddings from every process with gradients, plus caption ids.

Each process keeps only the rows of its own samples (open_clip's local loss) and scales its loss so
that the DDP gradient average equals the gradient of the loss over the global batch: the autograd
all-gather of torch's functional collectives sums the gradient of every process's rows back onto the
process that owns the embedding (its backward is a reduce-scatter).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed._functional_collectives import all_gather_single_autograd


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x over processes along dim 0 (gradient flows back to each owner); identity alone."""
    rank, world = _world()
    if world == 1:
        return x
    if x.requires_grad:
        return all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def caption_ids(captions: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
    """Stable 63-bit ids: equal strings get equal ids on every process (multi-positive targets)."""
    ids = [int.from_bytes(hashlib.blake2b(c.encode(), digest_size=8).digest(), "little") >> 1 for c in captions]
    return torch.tensor(ids, dtype=torch.long, device=device)


@dataclass
class GlobalBatch:
    """Local rows (n) against global columns (N = n * world)."""

    image: torch.Tensor  # (n, D) local, L2-normalised
    text: torch.Tensor  # (n, D) local, L2-normalised
    all_image: torch.Tensor  # (N, D)
    all_text: torch.Tensor  # (N, D)
    positives: torch.Tensor  # (n, N) bool: local caption == global caption, both valid
    row_valid: torch.Tensor  # (n,) bool: the local sample has this caption
    col_valid: torch.Tensor  # (N,) bool
    scale: torch.Tensor  # () world / number of valid samples in the global batch (0 when none)


def global_batch(image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> GlobalBatch:
    """Every process holds a micro-batch of the same size (the loaders drop the last partial batch), so the
    gathered columns line up. The scale stays a tensor: no host-device synchronisation in the step."""
    image = torch.nn.functional.normalize(image.float(), dim=-1)
    text = torch.nn.functional.normalize(text.float(), dim=-1)
    _, world = _world()
    all_ids, all_valid = gather(ids), gather(valid)
    positives = (ids[:, None] == all_ids[None, :]) & valid[:, None] & all_valid[None, :]
    n_valid = all_valid.sum()
    scale = torch.where(n_valid > 0, world / n_valid.clamp(min=1), torch.zeros((), device=n_valid.device))
    return GlobalBatch(image, text, gather(image), gather(text), positives, valid, all_valid, scale)
