"""The built-in procedural scenes (`distill.data.scenes`), held-out split: texture (stuff) and colour
(thing) classes, every pixel labelled, as in ADE20K."""
from __future__ import annotations

import numpy as np

from distill.data.scenes import SCENE_CLASSES, THING_CLASSES, SceneDataset
from distill.eval.readers.base import SegDataset, SegSample
from tipscore.errors import UserError

DEFAULTS = {"length": 256, "size": 64, "seed": 0}


class HeldoutScenes(SegDataset):
    def __init__(self, length: int = 256, size: int = 64, seed: int = 0):
        self.scenes = SceneDataset("heldout", size=size, length=length, seed=seed)
        self.class_names = list(SCENE_CLASSES)
        self.background = None
        self.things = tuple(SCENE_CLASSES.index(name) for name in THING_CLASSES)
        self.name = f"scenes:length={length},size={size},seed={seed}"
        self.short_side = size  # models are evaluated at the scene size they were trained at

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> SegSample:
        scene = self.scenes.scene(index)
        return SegSample(self.scenes.item_name(index), scene.image, scene.mask.astype(np.int64))


def parse_options(options: str) -> dict[str, int]:
    """`options`: '' or 'key=value,...' with keys length, size, seed."""
    values = dict(DEFAULTS)
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in values or not value.isdigit():
            raise UserError(f"scenes dataset option {item!r} is invalid; expected key=integer with key in {sorted(values)}")
        values[key] = int(value)
    return values


def read_scenes(options: str) -> HeldoutScenes:
    return HeldoutScenes(**parse_options(options))
