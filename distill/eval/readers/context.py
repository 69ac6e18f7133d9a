"""PASCAL Context 59 in the mmsegmentation layout (what its `pascal_context.py` converter writes):

    VOC2010/JPEGImages/<id>.jpg
    VOC2010/SegmentationClassContext/<id>.png   single-channel, 0 = background (ignored), k = k-th of 59 classes
    VOC2010/ImageSets/SegmentationContext/{train,val}.txt
"""
from __future__ import annotations

from pathlib import Path

from distill.eval.readers.base import PairedFiles, find_root, packaged_classes, read_split, reduce_zero_label

_CANDIDATES = ("VOC2010", "VOCdevkit/VOC2010")


def read_context(path: Path, split: str = "val") -> PairedFiles:
    root = find_root(path, "SegmentationClassContext", _CANDIDATES)
    ids = read_split(root / "ImageSets" / "SegmentationContext" / f"{split}.txt")
    pairs = [(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClassContext" / f"{i}.png") for i in ids]
    return PairedFiles(f"context:{root}", packaged_classes("context59.txt"), None, pairs, reduce_zero_label)
