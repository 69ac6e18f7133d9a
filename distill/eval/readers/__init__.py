"""Segmentation dataset readers, one per layout, chosen by a `KIND:PATH` spec (or `scenes[:OPTIONS]`)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from distill.eval.readers.ade20k import read_ade20k
from distill.eval.readers.base import ProbeProtocol, SegDataset, SegSample
from distill.eval.readers.cocostuff import read_cocostuff
from distill.eval.readers.context import read_context
from distill.eval.readers.folder import read_folder
from distill.eval.readers.scenes import read_scenes
from distill.eval.readers.voc import read_voc
from common.errors import UserError

READERS = {
    "ade20k": read_ade20k,
    "voc": partial(read_voc, background=True),
    "voc20": partial(read_voc, background=False),
    "context": read_context,
    "cocostuff": read_cocostuff,
    "folder": read_folder,
}


SPLITS = ("train", "val")


def open_segmentation(spec: str, split: str = "val") -> SegDataset:
    """The `val` split (what every task scores) or the `train` split (what the probes train on)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; expected one of {SPLITS}")
    kind, _, rest = str(spec).partition(":")
    if kind == "scenes":
        return read_scenes(rest, split)
    if kind not in READERS or not rest:
        raise UserError(f"segmentation dataset {spec!r} is not understood; expected KIND:PATH with KIND in "
                        f"{', '.join(READERS)}, or scenes")
    path = Path(rest).expanduser()
    if not path.is_dir():
        raise UserError(f"dataset directory not found: {path}")
    return READERS[kind](path, split=split)


__all__ = ["READERS", "ProbeProtocol", "SegDataset", "SegSample", "open_segmentation"]
