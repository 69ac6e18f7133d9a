"""PASCAL VOC 2012: `JPEGImages`, palette PNGs in `SegmentationClass`, ids in `ImageSets/Segmentation/{train,val}.txt`.

Palette PNGs store class indices (0 = background, 255 = void border), which is what `np.asarray` of a
mode-P image returns. `voc` scores 21 classes with background; `voc20` scores the 20 objects and ignores
background pixels (the convention of zero-shot papers that report "VOC20").
"""
from __future__ import annotations

from pathlib import Path

from distill.eval.readers.base import PairedFiles, find_root, keep_label, packaged_classes, read_split, reduce_zero_label

_CANDIDATES = ("VOC2012", "VOCdevkit/VOC2012")


def read_voc(path: Path, split: str = "val", background: bool = True) -> PairedFiles:
    root = find_root(path, "JPEGImages", _CANDIDATES)
    ids = read_split(root / "ImageSets" / "Segmentation" / f"{split}.txt")
    pairs = [(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids]
    classes = packaged_classes("voc.txt")
    if background:
        return PairedFiles(f"voc:{root}", classes, 0, pairs, keep_label)
    return PairedFiles(f"voc20:{root}", classes[1:], None, pairs, reduce_zero_label)
