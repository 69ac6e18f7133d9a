"""A generic labelled folder:

    classes.txt                one class name per line; line k is label value k
    images/<name>.<ext>        validation images (jpg/jpeg/png/bmp/webp)
    masks/<name>.png           single-channel or palette PNG of label values, 255 = ignore
    train/images/<name>.<ext>  optional training split for the probes (linear-seg), same layout,
    train/masks/<name>.png     labelled with the same classes.txt

A class named `background` is treated as the background class of the baselines.
"""
from __future__ import annotations

from pathlib import Path

from distill.eval.readers.base import IMAGE_SUFFIXES, PairedFiles, keep_label, require
from common.errors import UserError


def read_folder(path: Path, split: str = "val") -> PairedFiles:
    classes_file = require(path / "classes.txt", "class list")
    classes = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
    if not classes:
        raise UserError(f"class list {classes_file} is empty; expected one class name per line")
    root = path / "train" if split == "train" else path
    images = sorted(p for p in require(root / "images", f"{split} image folder").iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES)
    pairs = [(p, root / "masks" / f"{p.stem}.png") for p in images]
    background = classes.index("background") if "background" in classes else None
    name = f"folder:{path}" if split == "val" else f"folder:{path}[train]"
    return PairedFiles(name, classes, background, pairs, keep_label)
