"""Per-sample random streams: a generator that depends only on (seed, step, sample index, purpose).

Masks and caption choices drawn this way do not depend on how a global batch is split over
processes or accumulation steps, nor on where a run was resumed, so a 2-process run reproduces a
1-process run and a resumed run reproduces an uninterrupted one.
"""
from __future__ import annotations

import hashlib

import torch

STREAMS = ("mask", "caption")


def hashed_generator(*key: int | str) -> torch.Generator:
    """A generator that depends only on `key`: hashed, so nearby keys give unrelated streams."""
    digest = hashlib.blake2b("/".join(str(part) for part in key).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def sample_generator(seed: int, step: int, index: int, stream: str) -> torch.Generator:
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; expected one of {STREAMS}")
    return hashed_generator(seed, step, index, stream)
