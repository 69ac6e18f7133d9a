"""The built-in procedural scenes (`distill.data.scenes`): material (stuff) and colour (thing) classes, every
pixel labelled, as in ADE20K; overlays draw each class in its own colour (a material in its tone). Evaluation
reads the held-out split; the probes train on the train split (same size and seed, disjoint scenes)."""
from __future__ import annotations

import numpy as np

from distill.data.scenes import COLOURS, MATERIALS, SCENE_CLASSES, THING_CLASSES, SceneDataset
from distill.eval.readers.base import ProbeProtocol, SegDataset, SegSample
from tipscore.errors import UserError

DEFAULTS = {"length": 256, "size": 64, "seed": 0}
SPLITS = {"train": "train", "val": "heldout"}


def scene_probe(size: int) -> ProbeProtocol:
    """Small enough for a CPU in seconds: the micro models' features separate the scene classes quickly."""
    return ProbeProtocol(size=size, iterations=300, batch_size=16, lr=1e-2)


class Scenes(SegDataset):
    def __init__(self, length: int = 256, size: int = 64, seed: int = 0, split: str = "val"):
        self.scenes = SceneDataset(SPLITS[split], size=size, length=length, seed=seed)
        self.class_names = list(SCENE_CLASSES)
        self.background = None
        self.things = tuple(SCENE_CLASSES.index(name) for name in THING_CLASSES)
        self.colours = np.array([MATERIALS[name].tone if name in MATERIALS else COLOURS[name] for name in SCENE_CLASSES],
                                dtype=np.uint8)
        self.name = scenes_name(length, size, seed, split)
        self.short_side = size  # models are evaluated at the scene size they were trained at
        self.probe = scene_probe(size)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> SegSample:
        scene = self.scenes.scene(index)
        return SegSample(self.scenes.item_name(index), scene.image, scene.mask.astype(np.int64))


def scenes_name(length: int, size: int, seed: int, split: str) -> str:
    return f"scenes:length={length},size={size},seed={seed}" + ("" if split == "val" else f"[{split}]")


def parse_options(options: str) -> dict[str, int]:
    """`options`: '' or 'key=value,...' with keys length, size, seed."""
    values = dict(DEFAULTS)
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in values or not value.isdigit():
            raise UserError(f"scenes dataset option {item!r} is invalid; expected key=integer with key in {sorted(values)}")
        values[key] = int(value)
    return values


def read_scenes(options: str, split: str = "val") -> Scenes:
    return Scenes(**parse_options(options), split=split)
