"""Images to model inputs (RGB in [0,1], no normalisation: each model applies its own), and image sets.

Image sets (retrieval, fidelity) are `scenes[:length=N,size=S,seed=K]` (the held-out built-in scenes) or
any data spec of the distillation engine (`distill.data.build_dataset`): samples with `.image` and
`.captions`.
"""
from __future__ import annotations

from functools import partial

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, Subset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from distill.data import build_dataset
from distill.data.scenes import SceneDataset
from distill.eval.readers.scenes import parse_options


def resize_short_side(image: Image.Image, short_side: int) -> Image.Image:
    """Bicubic resize so that the shorter side is `short_side` (PIL, like the official notebook)."""
    if min(image.size) == short_side:
        return image
    return TF.resize(image, short_side, interpolation=InterpolationMode.BICUBIC)


def resized_sample(short_side: int, sample) -> tuple:
    """(sample, its image with the short side resized, as a (3, H, W) tensor in [0, 1])."""
    return sample, TF.to_tensor(resize_short_side(sample.image, short_side))


def square_crop(image: Image.Image, size: int) -> torch.Tensor:
    """Short side to `size`, centre crop `size` x `size`, as a (3, size, size) tensor in [0, 1]."""
    return TF.to_tensor(TF.center_crop(resize_short_side(image, size), size))


def patch_multiple(size: int, patch: int) -> int:
    return max(patch, size // patch * patch)


def open_image_set(spec: str):
    kind, _, rest = str(spec).partition(":")
    if kind == "scenes":
        return SceneDataset("heldout", **parse_options(rest))
    return build_dataset(spec)


def _collate(prepare, items: list) -> list:
    return items if prepare is None else [prepare(item) for item in items]


def batches(dataset, batch_size: int, limit: int | None = None, workers: int = 0, prepare=None):
    """Batches (lists of `prepare(sample)`: images differ in size) over the first `limit` samples.

    `prepare` runs in the workers, so it must be picklable (a module-level function or a partial of one)
    when `workers` > 0. Streams (webdataset shards) have no length: they are cut after `limit` samples.
    """
    stream = isinstance(dataset, IterableDataset)
    if limit is not None and not stream:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=partial(_collate, prepare))
    return _first(loader, limit) if stream and limit is not None else loader


def _first(loader, limit: int):
    for batch in loader:
        yield batch[:limit]
        limit -= len(batch)
        if limit <= 0:
            return
