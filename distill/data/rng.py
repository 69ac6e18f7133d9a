"""Keyed random streams: a generator that depends only on (purpose, seed, epoch, sample index, ...).

Crops, masks, caption choices and extra views drawn this way do not depend on the process layout, the
data-loader workers, accumulation or where a run was resumed, so a 2-process run reproduces a 1-process
run and a resumed run reproduces an uninterrupted one.
"""
from __future__ import annotations

import hashlib

import torch


def keyed_generator(purpose: str, *key: int) -> torch.Generator:
    """A generator that depends only on (purpose, key): hashed, so nearby keys give unrelated streams."""
    digest = hashlib.blake2b("/".join(str(part) for part in (purpose, *key)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
