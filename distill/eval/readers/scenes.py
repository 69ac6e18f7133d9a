"""The built-in procedural scenes (`distill.data.scenes`): material (stuff) and colour (thing) classes, every
pixel labelled, as in ADE20K; overlays draw each class in its own colour (a material in its tone). Evaluation
reads the held-out split (`split=validation`: the validation split, for choosing step counts and settings); the
probes train on the train split (same size and seed, disjoint scenes)."""
from __future__ import annotations

import numpy as np

from distill.data.scenes import COLOURS, MATERIALS, SCENE_CLASSES, THING_CLASSES, SceneDataset
from distill.eval.readers.base import ProbeProtocol, SegDataset, SegSample
from common.errors import UserError

DEFAULTS = {"length": 256, "size": 64, "seed": 0}
EVAL_SPLITS = ("heldout", "validation")  # what `split=` may name: the probes' training split is always train


def scene_probe(size: int) -> ProbeProtocol:
    """Small enough for a CPU in seconds: the micro models' features separate the scene classes quickly."""
    return ProbeProtocol(size=size, iterations=300, batch_size=16, lr=1e-2)


class Scenes(SegDataset):
    def __init__(self, length: int = 256, size: int = 64, seed: int = 0, split: str = "val",
                 eval_split: str = "heldout"):
        self.scenes = SceneDataset(scene_split(split, eval_split), size=size, length=length, seed=seed)
        self.class_names = list(SCENE_CLASSES)
        self.background = None
        self.things = tuple(SCENE_CLASSES.index(name) for name in THING_CLASSES)
        self.colours = np.array([MATERIALS[name].tone if name in MATERIALS else COLOURS[name] for name in SCENE_CLASSES],
                                dtype=np.uint8)
        self.name = scenes_name(length, size, seed, split, eval_split)
        self.short_side = size  # models are evaluated at the scene size they were trained at
        self.probe = scene_probe(size)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> SegSample:
        scene = self.scenes.scene(index)
        return SegSample(self.scenes.item_name(index), scene.image, scene.mask.astype(np.int64))


def scene_split(split: str, eval_split: str) -> str:
    """The scene split read for a reader split: `train` (a probe's training data) or the evaluated one."""
    return "train" if split == "train" else eval_split


def scenes_name(length: int, size: int, seed: int, split: str, eval_split: str = "heldout") -> str:
    options = f"length={length},size={size},seed={seed}" + ("" if eval_split == "heldout" else f",split={eval_split}")
    return f"scenes:{options}" + ("" if split == "val" else f"[{split}]")


def parse_options(options: str) -> dict:
    """`options`: '' or 'key=value,...' with integer keys length, size, seed and `split=heldout|validation`
    (returned as `eval_split`)."""
    values: dict = dict(DEFAULTS, eval_split="heldout")
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if sep and key == "split" and value in EVAL_SPLITS:
            values["eval_split"] = value
        elif sep and key in DEFAULTS and value.isdigit():
            values[key] = int(value)
        else:
            raise UserError(f"scenes dataset option {item!r} is invalid; expected key=integer with key in "
                            f"{sorted(DEFAULTS)}, or split= one of {', '.join(EVAL_SPLITS)}")
    return values


def read_scenes(options: str, split: str = "val") -> Scenes:
    return Scenes(**parse_options(options), split=split)
