"""What every segmentation reader yields, and the image + label-PNG pair loading they share."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distill.eval.metrics import IGNORE_INDEX
from common.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class ProbeProtocol:
    """A dataset's defaults for the trained probes (linear-seg, depth). The real datasets use DINOv2's linear
    segmentation protocol (arXiv 2304.07193, its mmsegmentation ADE20K config): 40k iterations of batch 16,
    AdamW at lr 1e-3, 512 px crops, sliding window 512 / stride 341."""

    size: int = 512  # short side, training crop and sliding window
    iterations: int = 40_000
    batch_size: int = 16
    lr: float = 1e-3


@dataclass
class SegSample:
    name: str  # file stem of the image: saved predictions are named after it
    image: Image.Image  # RGB
    label: np.ndarray  # (H, W) int64, class index in [0, C) or IGNORE_INDEX


class SegDataset(torch.utils.data.Dataset):
    """A labelled segmentation split. `background` is the index of a background class, if the data has one;
    `things` the indices of its thing classes (countable objects), if it declares them."""

    name: str
    class_names: list[str]
    background: int | None
    things: tuple[int, ...] | None = None
    colours: np.ndarray | None = None  # (C, 3) uint8: the colour each class is drawn in, when the data has its own
    short_side: int = 448  # the protocol's resize of the shorter image side for this data
    probe: ProbeProtocol = ProbeProtocol()

    def __getitem__(self, index: int) -> SegSample:
        raise NotImplementedError


def packaged_classes(filename: str) -> list[str]:
    text = resources.files("distill.eval").joinpath("classes", filename).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    return path


def read_split(path: Path) -> list[str]:
    require(path, "split file")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(f"split file {path} lists no images")
    return ids


@contextmanager
def open_image(path: Path, what: str):
    """PIL open (lazy: headers only until pixels are asked for) with a one-line error for unreadable files."""
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, Image.DecompressionBombError) as exc:
        raise UserError(f"{what} {path} cannot be read ({str(exc).splitlines()[0]})") from None


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """0 (unlabelled / background not scored) -> ignore, k -> k-1; ignore stays ignore."""
    out = label.astype(np.int64) - 1
    out[(label == 0) | (label == IGNORE_INDEX)] = IGNORE_INDEX
    return out


def keep_label(label: np.ndarray) -> np.ndarray:
    return label.astype(np.int64)


class PairedFiles(SegDataset):
    """Images and single-channel (or palette) label PNGs, checked up front so a bad file fails before any model runs."""

    def __init__(self, name: str, class_names: list[str], background: int | None,
                 pairs: list[tuple[Path, Path]], convert: Callable[[np.ndarray], np.ndarray]):
        if not pairs:
            raise UserError(f"dataset {name} has no images")
        self.name, self.class_names, self.background = name, class_names, background
        self.pairs, self.convert = pairs, convert
        for image_path, mask_path in pairs:
            require(image_path, "image")
            require(mask_path, "label mask")
            with open_image(image_path, "image") as image, open_image(mask_path, "label mask") as mask:
                if image.size != mask.size:
                    raise UserError(f"label mask {mask_path} is {mask.size[0]}x{mask.size[1]} but its image "
                                    f"{image_path.name} is {image.size[0]}x{image.size[1]}; expected equal sizes")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> SegSample:
        image_path, mask_path = self.pairs[index]
        with open_image(mask_path, "label mask") as mask:
            if mask.mode not in ("P", "L", "I", "I;16"):
                raise UserError(f"label mask {mask_path} has mode {mask.mode}; expected a palette or single-channel PNG")
            raw = np.asarray(mask)
        label = self.convert(raw)
        bad = (label != IGNORE_INDEX) & ((label < 0) | (label >= len(self.class_names)))
        if bad.any():
            raise UserError(f"label mask {mask_path} holds value {int(raw[bad][0])}, outside the "
                            f"{len(self.class_names)} classes of {self.name} (and the ignore value {IGNORE_INDEX})")
        with open_image(image_path, "image") as image:
            rgb = image.convert("RGB")
        return SegSample(image_path.stem, rgb, label)


def find_root(path: Path, marker: str, candidates: tuple[str, ...]) -> Path:
    """Accept the dataset directory itself or a parent that holds it under a conventional name."""
    for root in (path, *(path / c for c in candidates)):
        if (root / marker).exists():
            return root
    raise UserError(f"{path} does not look like the expected layout: no {marker} under it "
                    f"(or under {', '.join(candidates)})")


def image_annotation_pairs(root: Path, split: str, mask_suffix: str = "") -> list[tuple[Path, Path]]:
    """The `images/<split>/*.jpg` + `annotations/<split>/<stem><suffix>.png` layout (ADE20K, mmseg COCO-Stuff)."""
    images = sorted((root / "images" / split).glob("*.jpg"))
    if not images:
        raise UserError(f"no .jpg images in {root / 'images' / split}")
    return [(p, root / "annotations" / split / f"{p.stem}{mask_suffix}.png") for p in images]
