"""Where a training step gets its teacher tokens: the teacher run on the batch, or the cache rows.

The loop calls `targets(batch) -> ImageTokens` and does not know which one it has, so a cached
run and an online run share every line of the step after it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from distill.cache.manifest import Preprocessing, check_cache_matches, read_manifest
from distill.cache.reader import CacheReader
from teachers.types import ImageTokens


class TeacherTargets(Protocol):
    def __call__(self, batch: dict) -> ImageTokens: ...


@dataclass
class OnlineTargets:
    """The frozen teacher on `batch["teacher_pixels"]` (inference mode inside `encode_image`)."""

    teacher: torch.nn.Module

    def __call__(self, batch: dict) -> ImageTokens:
        tokens = self.teacher.encode_image(batch["teacher_pixels"])
        # Inference tensors cannot be saved by autograd, and the losses save their targets.
        return tokens.map(torch.Tensor.clone)


@dataclass
class CachedTargets:
    """Rows a `make_replay_dataloader` batch carries in `batch["teacher_targets"]`."""

    device: torch.device | str = "cpu"

    def __call__(self, batch: dict) -> ImageTokens:
        t = batch["teacher_targets"]
        return ImageTokens(*(t[key].to(self.device, non_blocking=True) for key in ("cls", "registers", "patches")))


def open_cache(directory: Path | str, teacher_fingerprint: str, preprocessing: Preprocessing) -> CacheReader:
    """A reader for a cache that holds this teacher's targets for this run's crops, else a UserError."""
    check_cache_matches(Path(directory), read_manifest(directory), teacher_fingerprint, preprocessing)
    return CacheReader(directory)
