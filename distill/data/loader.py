"""Batches (`distill.data.batch.Batch`) for the training loop: one crop per image, shared by teacher and student,
the per-sample draws (masks, caption choices, extra views), the drawn captions tokenised for the text tower that
reads them, and the data stats.

The epoch reaches the workers inside every key (`EpochKey`) or through `set_epoch` on the stream, so
crops and draws depend on (seed, epoch, index) only, whatever the worker count, process count or resume point.
The view sizes travel the same way (`set_sizes`), so a run can switch resolution between phases
(`train.resolution_phases`); the loop restarts the epoch's iteration at its position when it does.
Call `loader.set_epoch(epoch)` before each epoch (Accelerate's prepared loaders do it themselves,
counting completed passes; after a resume set it explicitly).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache, partial
from typing import Any, Iterator, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from common.errors import UserError

from distill.data.augment import (CropConfig, CropParams, crop_generator, crop_view, crop_views, sample_crop,
                                  source_pixels, stack_views)
from distill.data.batch import Batch
from distill.data.captions import CaptionTokenizer
from distill.data.draws import Draws, collate_draws
from distill.data.rng import keyed_generator
from distill.data.sample import CAPTION_KEYS, DataStats, Sample


class Sizes(NamedTuple):
    student: int
    teacher: int


@dataclass(frozen=True)
class Augment:
    student_size: int
    teacher_size: int
    seed: int = 0
    crop: CropConfig = CropConfig()
    draws: Draws = Draws()

    def __call__(self, sample: Sample, epoch: int, sizes: Sizes | None = None) -> dict[str, Any]:
        """`sizes`: this phase's view sizes (default: the augment's own)."""
        sizes = sizes or Sizes(self.student_size, self.teacher_size)
        pixels = source_pixels(sample.decoded)
        params = sample_crop(tuple(pixels.shape[-2:]), crop_generator(self.seed, epoch, sample.index), self.crop)
        if sizes.teacher == sizes.student:
            return self.item(sample, params, epoch, sizes.student, crop_view(pixels, params, sizes.student))
        # Both from the source image, not one from the other: each side gets its full resolution.
        student, teacher = crop_views(pixels, params, sizes)
        return {**self.item(sample, params, epoch, sizes.student, student), "teacher_pixels": teacher}

    def item(self, sample: Sample, params: CropParams, epoch: int, size: int | None = None,
             view: torch.Tensor | None = None) -> dict[str, Any]:
        """The student's view of `sample` under the crop `params` at `size`, with this epoch's draws; `view`: that
        view when already cut. Views stay uint8 (`crop_view`) through the collate: the batch becomes float where it
        is moved to (`Batch.to`)."""
        size = size or self.student_size
        view = crop_view(source_pixels(sample.decoded), params, size) if view is None else view
        return {"pixels": view, "captions": sample.captions,
                "index": sample.index, "crop": params.as_tensor(), "events": sample.events,
                **self.draws(sample.captions, size, self.seed, epoch, sample.index)}


class EpochKey(NamedTuple):
    epoch: int
    index: int
    sizes: Sizes | None = None


class EpochSampler(Sampler[EpochKey]):
    """A permutation per (seed, epoch), yielding keys that carry the epoch to the workers.

    Not a RandomSampler, so Accelerate keeps it; with several processes it shards the batches."""

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True):
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0
        self.sizes: Sizes | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_sizes(self, sizes: Sizes | None) -> None:
        self.sizes = sizes

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[EpochKey]:
        order = (torch.randperm(self.length, generator=keyed_generator("order", self.seed, self.epoch)).tolist()
                 if self.shuffle else range(self.length))
        return (EpochKey(self.epoch, index, self.sizes) for index in order)


class AugmentedDataset(Dataset):
    def __init__(self, source: Dataset, augment: Augment):
        self.source, self.augment = source, augment

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: EpochKey) -> dict[str, Any]:
        return self.augment(self.source[key.index], key.epoch, key.sizes)


class AugmentedStream(IterableDataset):
    """For streaming sources (`wds:`): they shard themselves over processes and workers."""

    def __init__(self, source, augment: Augment):
        self.source, self.augment, self.epoch, self.sizes = source, augment, 0, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_sizes(self, sizes: Sizes | None) -> None:
        self.sizes = sizes

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample in self.source.stream(self.augment.seed, self.epoch):
            yield self.augment(sample, self.epoch, self.sizes)


class EpochDataLoader(DataLoader):
    """A DataLoader with `set_epoch`, like the loaders `accelerator.prepare` returns.

    Prepare map-style loaders only: a streaming (`wds:`) loader already reads just this process's
    shards, and Accelerate would split (or broadcast) its batches a second time."""

    def set_epoch(self, epoch: int) -> None:
        self._keys().set_epoch(epoch)

    def set_sizes(self, sizes: Sizes | None) -> None:
        """View sizes from the next iteration on (Accelerate's prepared copy shares the sampler)."""
        self._keys().set_sizes(sizes)

    def _keys(self):
        return self.dataset if isinstance(self.dataset, AugmentedStream) else self.sampler


def collate(items: list[dict[str, Any]], captions: CaptionTokenizer | None = None) -> Batch:
    """The `Batch` of `items` (uint8 views), with the draws they carry; `captions` tokenises the caption pairs."""
    pixels = stack_views([item["pixels"] for item in items])
    teacher = stack_views([item["teacher_pixels"] for item in items]) if "teacher_pixels" in items[0] else pixels
    stats = DataStats()
    for item in items:
        stats.add(item["events"], samples=1)
    return Batch(pixels=pixels, teacher_pixels=teacher,
                 index=torch.tensor([item["index"] for item in items], dtype=torch.int64),
                 crop=torch.stack([item["crop"] for item in items]),
                 captions={key: [item["captions"].get(key) for item in items] for key in CAPTION_KEYS},
                 stats=stats, **collate_draws(items, captions))


def make_dataloader(dataset, *, batch_size: int, student_size: int, teacher_size: int | None = None,
                    seed: int = 0, crop: CropConfig = CropConfig(), draws: Draws = Draws(), num_workers: int = 0,
                    drop_last: bool = True, shuffle: bool = True, pin_memory: bool = False,
                    captions: CaptionTokenizer | None = None) -> EpochDataLoader:
    """A loader over any `build_dataset` result (or any map-style dataset of `Sample`s).
    `teacher_size` None means the student's size; `shuffle` applies to map-style datasets (a `wds:`
    source shuffles shards and a sample buffer itself); `captions` tokenises the drawn caption pairs in the
    workers, for the text tower that reads them."""
    if batch_size < 1 or student_size < 1 or (teacher_size is not None and teacher_size < 1):
        raise UserError(f"batch_size={batch_size}, student_size={student_size}, teacher_size={teacher_size}: "
                        "expected positive integers")
    if num_workers < 0:
        raise UserError(f"num_workers={num_workers}: expected 0 or more")
    augment = Augment(student_size, teacher_size or student_size, seed, crop, draws)
    return epoch_loader(dataset, augment, partial(collate, captions=captions), batch_size=batch_size, seed=seed,
                        num_workers=num_workers, drop_last=drop_last, shuffle=shuffle, pin_memory=pin_memory)


def epoch_loader(dataset, augment, collate_fn, *, batch_size: int, seed: int, num_workers: int, drop_last: bool,
                 shuffle: bool, pin_memory: bool) -> EpochDataLoader:
    """The loader around an augment (online: `Augment`; cached runs: the cache's replay)."""
    keep_freed_memory()
    common = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn, drop_last=drop_last,
                  pin_memory=pin_memory, worker_init_fn=_worker_init)
    if isinstance(dataset, IterableDataset):
        return EpochDataLoader(AugmentedStream(dataset, augment), **common)
    # The epoch travels inside each key, so map-style workers can live across epochs (no restart cost);
    # a stream's workers must restart to see `set_epoch`.
    return EpochDataLoader(AugmentedDataset(dataset, augment), sampler=EpochSampler(len(dataset), seed, shuffle),
                           persistent_workers=num_workers > 0, **common)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@cache
def keep_freed_memory() -> bool:
    """Let this process reuse the memory of freed images instead of handing it back to the kernel. glibc serves a
    block over its mmap threshold (128 KiB at first: a decoded photo, a view, a batch) from fresh pages and trims
    freed heap, so each image's buffers are page-faulted in and zeroed again (~200 faults an image here); a trim
    threshold of 256 MiB and an mmap threshold of 64 MiB (32 MiB, the most glibc < 2.35 accepts, where 64 is
    refused) keep them, see mallopt(3). Every loader calls it, so it holds for the process that builds one (the
    trainer itself when it loads without workers) and for its workers: a forked worker inherits it, a spawned one
    sets it in `_worker_init`. The cost: such a process keeps its peak heap. True where set (glibc); elsewhere
    (musl, macOS, Windows) a no-op."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows' CDLL wants a name
        return False
    trimmed = bool(mallopt(_M_TRIM_THRESHOLD, 256 << 20))
    return trimmed and any(mallopt(_M_MMAP_THRESHOLD, mib << 20) for mib in (64, 32))


def _worker_init(worker_id: int) -> None:
    keep_freed_memory()
