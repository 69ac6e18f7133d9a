"""ADE20K (SceneParsing `ADEChallengeData2016`): 150 classes, label 0 = unlabelled -> ignored, k -> k-1.
Splits `training` (20,210 images) and `validation` (2,000)."""
from __future__ import annotations

from pathlib import Path

from distill.eval.readers.base import (PairedFiles, find_root, image_annotation_pairs, packaged_classes,
                                      reduce_zero_label)


_SPLITS = {"train": "training", "val": "validation"}


def read_ade20k(path: Path, split: str = "val") -> PairedFiles:
    root = find_root(path, f"images/{_SPLITS[split]}", ("ADEChallengeData2016",))
    pairs = image_annotation_pairs(root, _SPLITS[split])
    return PairedFiles(f"ade20k:{root}", packaged_classes("ade20k.txt"), None, pairs, reduce_zero_label)
