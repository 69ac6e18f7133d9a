"""Images to model inputs (RGB in [0,1], no normalisation: each model applies its own), and image sets.

Image sets (retrieval, fidelity) are `scenes[:length=N,size=S,seed=K]` (the held-out built-in scenes) or
any data spec of the distillation engine (`distill.data.build_dataset`, with its options): samples with
`.image` and `.captions`. Unlike training, evaluation never replaces a broken image by another (that would score
an image twice): it is skipped and counted, and the report says how many images were scored and skipped.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import partial

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from distill.data import build_dataset
from distill.data.clean import BadSample
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


def square_side(resolution: int | None, model) -> int:
    """The side of the square crops a model sees: `resolution` (None: its native size), down to a patch multiple."""
    return patch_multiple(resolution or model.image_size, model.patch_size)


@dataclass(frozen=True)
class Unusable:
    """An image that could not be read: skipped, counted and named in the report."""

    name: str
    reason: str


# What decoding a broken image file raises (PIL), when a task opens files itself.
DECODE_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError)


class ScoredAsIs(Dataset):
    """An engine data source read item by item: a broken item is `Unusable`, not the next valid one."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        try:
            return self.source.load(index)
        except BadSample as exc:
            return Unusable(str(self.source.image_file(index) or f"item {index}"), exc.reason)


def open_image_set(spec: str, options: dict | None = None):
    """`options`: the data source's options, as a recipe's `data.options` (e.g. `split`, `index`)."""
    kind, _, rest = str(spec).partition(":")
    if kind == "scenes":
        options = parse_options(rest)
        return SceneDataset(options.pop("eval_split"), **options)
    source = build_dataset(spec, **(options or {}))
    return source if isinstance(source, IterableDataset) else ScoredAsIs(source)


def _collate(prepare, items: list) -> list:
    return [item if prepare is None or isinstance(item, Unusable) else prepare(item) for item in items]


class Batches:
    """Batches (lists of `prepare(sample)`: images differ in size) over the first `limit` samples; `Unusable`
    items are left out and counted (`counts()`)."""

    def __init__(self, dataset, batch_size: int, limit: int | None = None, workers: int = 0, prepare=None):
        self.stream = isinstance(dataset, IterableDataset)
        if limit is not None and not self.stream:
            dataset = Subset(dataset, range(min(limit, len(dataset))))
        self.loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                 collate_fn=partial(_collate, prepare))
        self.limit, self.scored, self.skipped, self.examples = limit, 0, Counter(), []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        left = self.limit
        for batch in self.loader:
            if self.stream and left is not None:  # streams have no length: cut after `limit` samples
                batch, left = batch[:left], left - len(batch)
            usable = [item for item in batch if not isinstance(item, Unusable)]
            for item in batch:
                if isinstance(item, Unusable):
                    self.skipped[item.reason] += 1
                    self.examples = (self.examples + [item.name])[:5]
            self.scored += len(usable)
            if usable:
                yield usable
            if left is not None and left <= 0:
                return

    def counts(self) -> dict:
        return {"images_scored": self.scored, "images_skipped": sum(self.skipped.values()),
                "skipped_reasons": dict(self.skipped), "skipped_examples": self.examples}
