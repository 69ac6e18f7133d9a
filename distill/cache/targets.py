"""The distill loop's side of a cache: open it for a recipe (refusing a stale one), build the replay
loader, and hand the loop the teacher tokens a replayed batch carries instead of running the teacher.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from distill.cache.manifest import Preprocessing, check_cache_matches, dataset_identity, read_manifest
from distill.cache.reader import CacheReader
from distill.cache.replay import TARGET_KEYS, make_replay_dataloader
from teachers.types import ImageTokens


@dataclass
class CachedTargets:
    """Teacher tokens of a `make_replay_dataloader` batch (`batch["teacher_targets"]`), on the device."""

    device: torch.device | str = "cpu"

    def __call__(self, batch: dict) -> ImageTokens:
        t = batch["teacher_targets"]
        return ImageTokens(*(t[key].to(self.device, non_blocking=True) for key in TARGET_KEYS))


def open_cache(directory: Path | str, teacher_fingerprint: str, preprocessing: Preprocessing) -> CacheReader:
    """A reader for a cache that holds this teacher's targets for this run's crops, else a UserError."""
    check_cache_matches(Path(directory), read_manifest(directory), teacher_fingerprint, preprocessing)
    return CacheReader(directory)


def recipe_preprocessing(recipe, dataset) -> Preprocessing:
    """What a distill recipe feeds its teacher, in the terms the cache records."""
    d = recipe.data
    return Preprocessing(dataset=dataset_identity(d.source), data_options=dict(d.options), dataset_length=len(dataset),
                         teacher_image_size=recipe.teacher.image_size or recipe.student.image_size,
                         crop_scale=tuple(d.crop_scale), crop_ratio=tuple(d.crop_ratio), flip_p=d.flip_p,
                         seed=recipe.seed)


def replay_loader(cache_dir, recipe, dataset, teacher, batch_size: int):
    """The loader of a cached distill run (`cache=DIR`): refuses a cache of another teacher or preprocessing."""
    reader = open_cache(cache_dir, teacher.fingerprint, recipe_preprocessing(recipe, dataset))
    return make_replay_dataloader(dataset, reader, batch_size=batch_size, student_size=recipe.student.image_size,
                                  seed=recipe.seed, num_workers=recipe.data.num_workers, shuffle=recipe.data.shuffle)
