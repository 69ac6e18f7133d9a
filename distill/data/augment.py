"""The one augmentation: a random resized crop + horizontal flip, with explicit parameters.

Parameters are drawn from a generator seeded by (seed, epoch, index) only, never the global RNG, so
a resumed or multi-process run draws the same crops, and the teacher-target cache can store
`CropParams` and replay them exactly with `apply_crop`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from distill.config import CropConfig
from distill.data.rng import keyed_generator


@dataclass(frozen=True)
class CropParams:
    """A crop box in source-image pixels (after RGB conversion and EXIF rotation), then a flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.top, self.left, self.height, self.width, int(self.flip)], dtype=torch.int64)

    @classmethod
    def from_tensor(cls, row: torch.Tensor) -> CropParams:
        top, left, height, width, flip = (int(v) for v in row.tolist())
        return cls(top, left, height, width, bool(flip))


def crop_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return keyed_generator("crop", seed, epoch, index)


def sample_crop(image_size: tuple[int, int], rng: torch.Generator, crop: CropConfig = CropConfig()) -> CropParams:
    """`image_size` is (height, width). Same draws as torchvision's RandomResizedCrop.get_params,
    which only reads the global RNG; this takes a generator instead."""
    scale, ratio = crop.scale, crop.ratio
    height, width = image_size
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    box = None
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=rng).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=rng).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=rng).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=rng).item())
            box = (top, left, h, w)
            break
    if box is None:  # central crop at the nearest allowed aspect ratio
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            w, h = int(round(height * max(ratio))), height
        else:
            w, h = width, height
        box = ((height - h) // 2, (width - w) // 2, h, w)
    flip = bool(torch.rand(1, generator=rng).item() < crop.flip_p)
    return CropParams(*box, flip=flip)


def source_pixels(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """A (3, H, W) tensor view of an RGB PIL image (uint8, one copy); a tensor as it is. Made once per sample:
    both views are cut from it."""
    return F.to_image(image).as_subclass(torch.Tensor) if isinstance(image, Image.Image) else image


def crop_view(pixels: torch.Tensor, params: CropParams, size: int) -> torch.Tensor:
    """(3, size, size) in the dtype of `pixels` (a `source_pixels` tensor): crop, antialiased bilinear resize,
    then the flip."""
    height, width = pixels.shape[-2:]
    if not (0 <= params.top and 0 <= params.left and 0 < params.height and 0 < params.width
            and params.top + params.height <= height and params.left + params.width <= width):
        # Usually (width, height) passed where sample_crop wants (height, width).
        raise ValueError(f"{params} lies outside the {height}x{width} (HxW) image")
    # On uint8 (the source's own precision) torchvision's antialiased resize is ~5x cheaper than on float.
    pixels = F.resized_crop(pixels, params.top, params.left, params.height, params.width, [size, size],
                            antialias=True)
    return F.hflip(pixels) if params.flip else pixels


def to_float(pixels: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """float32 in [0, 1] (into `out` when given). uint8 exactly as torchvision's `to_dtype(..., scale=True)`:
    x * (1/255) in float32, elementwise, so a view gets the same bits alone or in a batch; a float input is
    clamped, since an antialiased resize overshoots [0, 1] near edges."""
    if pixels.dtype == torch.uint8:
        return torch.mul(pixels, 1 / 255, out=out)
    return torch.clamp(pixels.to(torch.float32), 0, 1, out=out)


def stack_float(views: list[torch.Tensor]) -> torch.Tensor:
    """(B, 3, S, S) float32 of `crop_view`s, each converted straight into its row: one pass over the batch,
    and no uint8 or per-view float copy is allocated on the way."""
    batch = torch.empty((len(views), *views[0].shape), dtype=torch.float32)
    for view, row in zip(views, batch):
        to_float(view, out=row)
    return batch


def resize_views(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """A batch of float views (B, 3, T, T) at another teacher's input size `size`: antialiased bilinear, as the
    views' own resize, clamped to [0, 1] as `to_float` does; the batch itself when it is at `size` already. The
    online teachers of a run and the cache build both call it, so a cache holds the targets of the very pixels an
    online run feeds that teacher."""
    if pixels.shape[-1] == size:
        return pixels
    resized = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False,
                                              antialias=True)
    return resized.clamp(0, 1)


def apply_crop(image: Image.Image | torch.Tensor, params: CropParams, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [0, 1]: `crop_view`, then `to_float`. `image` is an RGB PIL image or a
    (3, H, W) uint8/float tensor."""
    return to_float(crop_view(source_pixels(image), params, size))
