"""Dense prediction over an image of any size: sliding windows whose per-window maps are averaged.

Shared by zero-shot segmentation (the official TIPSv2 notebook's `predict_slide`) and the probes
(mmsegmentation's `slide_inference`, which DINOv2's linear evaluation uses): both cover the image with
windows, run each window through the model, resize its maps to the window and divide the sum by the
number of windows that cover each pixel.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # y0, x0, y1, x1


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    return [min(i * stride, length - window) for i in range(count)]


def window_boxes(height: int, width: int, window: int | None, stride: int) -> list[Box]:
    """Windows covering the image; the last row/column is shifted back to end at the border."""
    if window is None:
        return [(0, 0, height, width)]
    return [(y, x, min(y + window, height), min(x + window, width))
            for y in _starts(height, window, stride) for x in _starts(width, window, stride)]


def ceil_to_patch(size: int, patch: int) -> int:
    return math.ceil(size / patch) * patch


def to_patch_multiple(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """Bicubic resize up to the next multiple of the patch size, as the official notebook does (not clamped,
    as there: bicubic overshoots [0,1] a little, which teachers tolerate)."""
    h, w = pixels.shape[-2:]
    size = (ceil_to_patch(h, patch), ceil_to_patch(w, patch))
    if size == (h, w):
        return pixels
    return F.interpolate(pixels[None], size=size, mode="bicubic", align_corners=False)[0]


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) -> (C, *size), bilinear (the identity when the size already matches)."""
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    return maps


def slide_average(images: list[torch.Tensor], window_maps: Callable[[torch.Tensor], torch.Tensor], *,
                  window: int | None, stride: int, batch_size: int, patch: int, device: torch.device,
                  post: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Per image (C, H, W): the average over the covering windows of `post(window maps resized to the window)`.

    images: (3, H, W) RGB in [0,1]; window_maps: (B, 3, h, w) pixels -> (B, C, h', w') maps at any size.
    Windows whose size is not a multiple of the patch size are resized up to one; windows of equal
    model-input size share a forward pass, across images, `batch_size` at a time.
    """
    sums: list[torch.Tensor | None] = [None] * len(images)
    counts = [torch.zeros(img.shape[-2:], device=device) for img in images]
    groups: dict[tuple[int, int], list[tuple[int, Box]]] = defaultdict(list)
    for i, img in enumerate(images):
        for box in window_boxes(*img.shape[-2:], window, stride):
            y0, x0, y1, x1 = box
            groups[math.ceil((y1 - y0) / patch), math.ceil((x1 - x0) / patch)].append((i, box))
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            pixels = torch.stack([to_patch_multiple(images[i][:, y0:y1, x0:x1], patch)
                                  for i, (y0, x0, y1, x1) in chunk]).to(device)
            for (i, (y0, x0, y1, x1)), maps in zip(chunk, window_maps(pixels)):
                maps = upsample(maps.float(), (y1 - y0, x1 - x0))
                maps = post(maps) if post is not None else maps
                if sums[i] is None:
                    sums[i] = torch.zeros(len(maps), *images[i].shape[-2:], device=device)
                sums[i][:, y0:y1, x0:x1] += maps
                counts[i][y0:y1, x0:x1] += 1
    return [s / c for s, c in zip(sums, counts)]


def window_side(model, _, protocol) -> int:
    """`per_resolution`'s input side for the probes: their windows are the crop, the image's short side."""
    return ceil_to_patch(protocol.size, model.patch_size)


def whole_image_patches(model, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Plain (no value trick) patch features (h, w, D) of one whole (3, H, W) image, for the PCA map."""
    return model.encode_image(to_patch_multiple(pixels, model.patch_size)[None].to(device)).patches[0]
