"""The one augmentation: a random resized crop + horizontal flip, with explicit parameters.

Parameters are drawn from a generator seeded by (seed, epoch, index) only, never the global RNG, so
a resumed or multi-process run draws the same crops, and the teacher-target cache can store
`CropParams` and replay them exactly with `apply_crop`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
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
    log_ratio = _log_ratio(ratio)
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


@cache
def _log_ratio(ratio: tuple[float, float]) -> tuple[float, float]:
    # In float32 as torchvision computes it, once per range instead of per draw.
    return tuple(torch.log(torch.tensor(ratio)).tolist())


def source_pixels(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A (3, H, W) uint8 tensor of an RGB image: a view of its (H, W, 3) pixels (of a decoded JPEG's array without
    a copy, of a PIL image after one); a tensor as it is. Made once per sample: both views are cut from it."""
    if isinstance(image, np.ndarray):
        return torch.from_numpy(image).permute(2, 0, 1)
    return F.to_image(image).as_subclass(torch.Tensor) if isinstance(image, Image.Image) else image


def crop_view(pixels: torch.Tensor, params: CropParams, size: int) -> torch.Tensor:
    """(3, size, size) in the dtype of `pixels` (a `source_pixels` tensor): crop, antialiased bilinear resize,
    then the flip."""
    return crop_views(pixels, params, (size,))[0]


def crop_views(pixels: torch.Tensor, params: CropParams, sizes: tuple[int, ...]) -> list[torch.Tensor]:
    """`crop_view` at each of `sizes`, from one copy of the crop box."""
    height, width = pixels.shape[-2:]
    if not (0 <= params.top and 0 <= params.left and 0 < params.height and 0 < params.width
            and params.top + params.height <= height and params.left + params.width <= width):
        # Usually (width, height) passed where sample_crop wants (height, width).
        raise ValueError(f"{params} lies outside the {height}x{width} (HxW) image")
    box = pixels[..., params.top:params.top + params.height, params.left:params.left + params.width]
    if box.dtype == torch.uint8:
        # On uint8 (the source's own precision) torchvision's antialiased resize is ~5x cheaper than on float. Its
        # kernel copies a strided box to channels-last first and writes channels-last output without repacking it:
        # one copy here serves every size, with the same bits.
        box = box.unsqueeze(0).contiguous(memory_format=torch.channels_last)[0]
    views = [F.resize(box, [size, size], antialias=True) for size in sizes]
    return [view.flip(-1) for view in views] if params.flip else views


def stack_views(views: list[torch.Tensor]) -> torch.Tensor:
    """(B, 3, S, S) of `crop_view`s, channels-last in memory as the resize writes uint8 views: stacked as they are
    it is a plain copy, where rearranging uint8 to channels-first costs 5x that (`to_float` does it in its pass)."""
    out = torch.empty((len(views), *views[0].shape), dtype=views[0].dtype, memory_format=torch.channels_last)
    return torch.stack(views, out=out)


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """float32 in [0, 1], contiguous whatever the layout of `pixels`. uint8 exactly as torchvision's
    `to_dtype(..., scale=True)`: x * (1/255) in float32, elementwise (one rounding, no accumulation), so a view gets
    the same bits alone or in a batch and on any device; a float input is clamped, since an antialiased resize
    overshoots [0, 1] near edges."""
    out = torch.empty(pixels.shape, dtype=torch.float32, device=pixels.device)
    # On the CPU image by image, ~1.8x faster than one pass over a batch (each image's fresh pages are first touched
    # while its pixels are in the cache); elsewhere in one op, not a kernel launch per image.
    pairs = (zip(pixels.reshape(-1, *pixels.shape[-3:]), out.view(-1, *out.shape[-3:]))
             if pixels.device.type == "cpu" else [(pixels, out)])
    for images, rows in pairs:
        if images.dtype == torch.uint8:
            torch.mul(images, 1 / 255, out=rows)
        else:
            torch.clamp(images.to(torch.float32), 0, 1, out=rows)
    return out


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


def apply_crop(image: Image.Image | np.ndarray | torch.Tensor, params: CropParams, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [0, 1]: `crop_view`, then `to_float`. `image` is an RGB PIL image, an (H, W, 3)
    uint8 array (`Sample.decoded`) or a (3, H, W) uint8/float tensor."""
    return to_float(crop_view(source_pixels(image), params, size))
