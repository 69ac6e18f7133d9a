"""A generic labelled folder:

    classes.txt          one class name per line; line k is label value k
    images/<name>.<ext>  jpg/jpeg/png/bmp/webp
    masks/<name>.png     single-channel or palette PNG of label values, 255 = ignore

A class named `background` is treated as the background class of the baselines.
"""
from __future__ import annotations

from pathlib import Path

from distill.eval.readers.base import IMAGE_SUFFIXES, PairedFiles, keep_label, require
from tipscore.errors import UserError


def read_folder(path: Path) -> PairedFiles:
    classes_file = require(path / "classes.txt", "class list")
    classes = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
    if not classes:
        raise UserError(f"class list {classes_file} is empty; expected one class name per line")
    images = sorted(p for p in require(path / "images", "image folder").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    pairs = [(p, path / "masks" / f"{p.stem}.png") for p in images]
    background = classes.index("background") if "background" in classes else None
    return PairedFiles(f"folder:{path}", classes, background, pairs, keep_label)
