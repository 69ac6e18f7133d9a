"""The built-in procedural scenes (`distill.data.scenes`), held-out split: colour classes + background."""
from __future__ import annotations

import numpy as np

from distill.data.scenes import SceneDataset
from distill.eval.readers.base import SegDataset, SegSample
from teachers.errors import UserError

DEFAULTS = {"length": 256, "size": 64, "seed": 0}


class MicroScenes(SegDataset):
    def __init__(self, length: int = 256, size: int = 64, seed: int = 0):
        self.scenes = SceneDataset("heldout", size=size, length=length, seed=seed)
        self.class_names = list(self.scenes.classes)
        self.background = self.class_names.index("background")
        self.name = f"micro:length={length},size={size},seed={seed}"
        self.short_side = size  # micro models are trained at the scene size

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> SegSample:
        name, image, mask = self.scenes.segmentation_item(index)
        return SegSample(name, image, mask.astype(np.int64))


def parse_options(options: str) -> dict[str, int]:
    """`options`: '' or 'key=value,...' with keys length, size, seed."""
    values = dict(DEFAULTS)
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in values or not value.isdigit():
            raise UserError(f"micro dataset option {item!r} is invalid; expected key=integer with key in {sorted(values)}")
        values[key] = int(value)
    return values


def read_micro(options: str) -> MicroScenes:
    return MicroScenes(**parse_options(options))
