"""Training batches from a cache: the stored crop, replayed at the student's resolution, with its targets.

Epoch e uses augmentation e mod K of every image. Augmentation k was built with the online
pipeline's crop for epoch k, so for the first K epochs a cached run sees exactly the pixels and
targets (up to the storage precision) of an online run with the same seed; later epochs cycle
through the K stored crops, each equally often. Masks, caption choices and extra views are drawn as
online, keyed by the epoch.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset

from distill.cache.manifest import Preprocessing, check_cache_matches, dataset_identity, read_manifest
from distill.cache.reader import CacheReader
from distill.cache.teacher_set import member_preprocessing
from distill.data.batch import Batch
from distill.data.captions import CaptionTokenizer
from distill.data.loader import Augment, EpochDataLoader, collate, epoch_loader
from distill.data.sample import Sample
from common.errors import UserError
from common.types import StoredTokens


@dataclass(frozen=True)
class ReplayAugment:
    """Stands in for `distill.data.loader.Augment`: the stored crop instead of a drawn one, plus
    `teacher_targets`, by teacher."""

    readers: Mapping[str, CacheReader]  # by teacher name, the primary first; built on the same crops
    augment: Augment  # the student side: size, seed and draws

    @property
    def seed(self) -> int:
        """A stream (wds:) orders its samples by it, as online."""
        return self.augment.seed

    def __call__(self, sample: Sample, epoch: int, sizes=None) -> dict[str, Any]:
        """`sizes`: the student's may change between phases; the teacher's is the cache's."""
        primary = next(iter(self.readers.values()))
        k = epoch % primary.manifest.augmentations
        return {**self.augment.item(sample, primary.crop(sample.index, k), epoch, sizes and sizes.student),
                "teacher_targets": {name: reader.stored(sample.index, k) for name, reader in self.readers.items()}}


def replay_collate(items: list[dict[str, Any]], captions: CaptionTokenizer | None = None) -> Batch:
    """`collate`'s batch with its `teacher_targets`."""
    names = items[0]["teacher_targets"]
    return replace(collate(items, captions), teacher_targets={
        name: StoredTokens.stack([item["teacher_targets"][name] for item in items]) for name in names})


def recipe_preprocessing(recipe, dataset) -> Preprocessing:
    """What a distill recipe feeds its teacher, in the terms the cache records."""
    d = recipe.data
    # Without a teacher section the cache alone says at which resolution its teacher ran.
    teacher_size = recipe.view_sizes(0)[1] if recipe.teacher is not None or recipe.teachers else None
    length = None if isinstance(dataset, IterableDataset) else len(dataset)
    return Preprocessing(dataset=dataset_identity(d.source), data_options=dict(d.options), dataset_length=length,
                         teacher_image_size=teacher_size, crop=d.crop, seed=recipe.seed)


def open_cache(directory: str | Path, preprocessing: Preprocessing) -> CacheReader:
    """A reader for a complete cache built with this preprocessing, else a one-line UserError."""
    check_cache_matches(directory, read_manifest(directory), preprocessing)
    return CacheReader(directory)


def open_replay(recipe, dataset, members: Mapping[str, str]) -> dict[str, CacheReader]:
    """Readers of the recipe's cache by teacher name (the primary first; `members`: each teacher's cache, as
    `cache_members` found them), each checked against what this run feeds that teacher; a one-line UserError for a
    cache of other crops or data."""
    pre = recipe_preprocessing(recipe, dataset)
    pres = member_preprocessing(recipe.teachers, pre) if recipe.teachers else {name: pre for name in members}
    readers = {name: open_cache(location, pres[name]) for name, location in members.items()}
    first, *others = readers.values()
    for reader in others:
        # The run's check leaves the seed to the cache: every teacher's targets must be of the primary's crops.
        if _crops(reader.manifest) != _crops(first.manifest):
            raise UserError(f"cache {reader.directory} holds other crops than {first.directory} (seed, augmentations "
                            f"{_crops(reader.manifest)}, not {_crops(first.manifest)}); rebuild the teacher set")
    return readers


def _crops(manifest) -> tuple[int, int]:
    return manifest.preprocessing.seed, manifest.augmentations


def replay_dataloader(dataset, readers: Mapping[str, CacheReader], augment: Augment, *, batch_size: int,
                      seed: int = 0, num_workers: int = 0, shuffle: bool = True, pin_memory: bool = False,
                      captions: CaptionTokenizer | None = None) -> EpochDataLoader:
    """`make_dataloader`'s counterpart for a cached run: the same sampler, so the same image order."""
    return epoch_loader(dataset, ReplayAugment(readers, augment), partial(replay_collate, captions=captions),
                        batch_size=batch_size, seed=seed, num_workers=num_workers, drop_last=True, shuffle=shuffle,
                        pin_memory=pin_memory)
