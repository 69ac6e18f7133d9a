"""COCO-Stuff 164k, 171 classes, in the mmsegmentation layout (its `coco_stuff164k.py` converter):

    images/{train2017,val2017}/<id>.jpg
    annotations/{train2017,val2017}/<id>_labelTrainIds.png   train ids 0..170, 255 = unlabelled
"""
from __future__ import annotations

from pathlib import Path

from distill.eval.readers.base import PairedFiles, find_root, image_annotation_pairs, keep_label, packaged_classes


_SPLITS = {"train": "train2017", "val": "val2017"}


def read_cocostuff(path: Path, split: str = "val") -> PairedFiles:
    root = find_root(path, f"images/{_SPLITS[split]}", ("coco_stuff164k",))
    pairs = image_annotation_pairs(root, _SPLITS[split], "_labelTrainIds")
    return PairedFiles(f"cocostuff:{root}", packaged_classes("cocostuff171.txt"), None, pairs, keep_label)
