"""Training batches from a cache: the stored crop, replayed at the student's resolution, with its targets.

Epoch e uses augmentation e mod K of every image. Augmentation k was built with the online
pipeline's crop for epoch k, so for the first K epochs a cached run sees exactly the pixels and
targets (up to the storage precision) of an online run with the same seed; later epochs cycle
through the K stored crops, each equally often.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distill.cache.reader import CacheReader
from distill.cache.writer import require_indexed
from distill.data.augment import apply_crop
from distill.data.loader import AugmentedDataset, EpochDataLoader, EpochSampler, collate
from distill.data.sample import Sample

TARGET_KEYS = ("cls", "registers", "patches")


@dataclass(frozen=True)
class ReplayAugment:
    """Stands in for `distill.data.loader.Augment`: same item layout plus `teacher_targets`."""

    reader: CacheReader
    student_size: int

    def __call__(self, sample: Sample, epoch: int) -> dict[str, Any]:
        k = epoch % self.reader.manifest.augmentations
        params = self.reader.crop(sample.index, k)
        return {"pixels": apply_crop(sample.image, params, self.student_size), "captions": sample.captions,
                "index": sample.index, "crop": params.as_tensor(), "events": sample.events,
                "teacher_targets": self.reader.targets(sample.index, k)}


def replay_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """`collate`'s batch plus `teacher_targets` {cls (B,D), registers (B,R,D), patches (B,h,w,D)}."""
    batch = collate(items)
    batch["teacher_targets"] = {key: torch.stack([item["teacher_targets"][key] for item in items])
                                for key in TARGET_KEYS}
    return batch


def make_replay_dataloader(dataset, reader: CacheReader, *, batch_size: int, student_size: int, seed: int = 0,
                           num_workers: int = 0, drop_last: bool = True, shuffle: bool = True) -> EpochDataLoader:
    """`make_dataloader`'s counterpart for a cached run (same sampler, so the same image order)."""
    require_indexed(dataset)
    return EpochDataLoader(AugmentedDataset(dataset, ReplayAugment(reader, student_size)), batch_size=batch_size,
                           sampler=EpochSampler(len(dataset), seed, shuffle), num_workers=num_workers,
                           collate_fn=replay_collate, drop_last=drop_last)
