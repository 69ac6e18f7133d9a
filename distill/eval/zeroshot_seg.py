"""Zero-shot semantic segmentation with the TIPSv2 protocol (the official google-deepmind/tips zero-shot
segmentation notebook).

Short side -> `short_side` (bicubic), RGB in [0,1]; patch features with the MaskCLIP value trick;
class embeddings from the 9 TCL templates; sliding windows whose patch-text cosine maps are upsampled
bilinearly to the window, softmaxed over classes, summed and divided by the overlap count, or the whole
image's cosine maps as they are; the result is upsampled to the label size and the argmax scored.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from distill.eval.inputs import batches, resize_short_side
from distill.eval.metrics import (IGNORE_INDEX, ConfusionMatrix, per_image_majority, segmentation_baselines, segmentation_scores,
                                  things_scores)
from distill.eval.prompts import TCL_TEMPLATES, class_embeddings
from distill.eval.readers import SegDataset, SegSample, open_segmentation
from distill.eval.report import label_png, overlay_panel, pca_panel, save_png
from distill.eval.task import ModelLoader, TaskResult, check_positive
from tipscore.errors import UserError

Box = tuple[int, int, int, int]  # y0, x0, y1, x1


@dataclass
class SegOptions:
    short_side: int | None = None  # None: the dataset's protocol size (448; micro scenes: their size)
    window: int | None = 448  # None: the whole image in one pass
    stride: int = 336
    value_trick: bool = True
    templates: tuple[str, ...] = TCL_TEMPLATES
    batch_size: int = 8  # images per data batch, and windows per forward pass
    limit: int | None = None
    workers: int = 0
    overlays: int = 4  # images per model drawn as PNG overlays
    save_predictions: Path | None = None

    def __post_init__(self):
        self.templates = tuple(self.templates)
        if self.save_predictions is not None:
            self.save_predictions = Path(self.save_predictions)
        check_positive(self, "short_side", "window", "stride", "batch_size", "limit")
        if self.overlays < 0:
            raise UserError(f"overlays {self.overlays} is invalid; expected 0 or more")
        if self.window is not None and self.stride > self.window:
            raise UserError(f"stride {self.stride} is larger than the window {self.window}; "
                            "pixels between windows would get no prediction")


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


def to_patch_multiple(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """Bicubic resize up to the next multiple of the patch size, as the official notebook does (not clamped,
    as there: bicubic overshoots [0,1] a little, which teachers tolerate)."""
    h, w = pixels.shape[-2:]
    size = (math.ceil(h / patch) * patch, math.ceil(w / patch) * patch)
    if size == (h, w):
        return pixels
    return F.interpolate(pixels[None], size=size, mode="bicubic", align_corners=False)[0]


def _cosine_maps(model, pixels: torch.Tensor, text: torch.Tensor, value_trick: bool) -> torch.Tensor:
    """(B, 3, H, W) -> (B, C, h, w) patch-text cosines on the patch grid."""
    patches = F.normalize(model.encode_image(pixels, value_trick=value_trick).patches.float(), dim=-1)
    return torch.einsum("bhwd,cd->bchw", patches, text)


def class_scores(model, images: list[torch.Tensor], text: torch.Tensor, opts: SegOptions) -> list[torch.Tensor]:
    """Per image (C, h, w) class scores whose bilinear upsampling to the label size is argmaxed.

    Whole image (`window=None`, the notebook's `predict_whole`): the raw cosine maps on the patch grid.
    Sliding windows (`predict_slide`): per window, the cosine maps upsampled to the window's own size and
    softmaxed over classes, summed and divided by the overlap count, at the image's resolution. Windows
    whose size is not a multiple of the patch size are resized up to one; windows of equal model-input size
    share a forward pass, across images.
    """
    patch, device = model.patch_size, text.device
    if opts.window is None:
        return [_cosine_maps(model, to_patch_multiple(img, patch)[None].to(device), text, opts.value_trick)[0]
                for img in images]
    sums = [torch.zeros(len(text), *img.shape[-2:], device=device) for img in images]
    counts = [torch.zeros(img.shape[-2:], device=device) for img in images]
    groups: dict[tuple[int, int], list[tuple[int, Box]]] = defaultdict(list)
    for i, img in enumerate(images):
        for box in window_boxes(*img.shape[-2:], opts.window, opts.stride):
            y0, x0, y1, x1 = box
            groups[math.ceil((y1 - y0) / patch), math.ceil((x1 - x0) / patch)].append((i, box))
    for members in groups.values():
        for start in range(0, len(members), opts.batch_size):
            chunk = members[start : start + opts.batch_size]
            pixels = torch.stack([to_patch_multiple(images[i][:, y0:y1, x0:x1], patch)
                                  for i, (y0, x0, y1, x1) in chunk]).to(device)
            cosine = _cosine_maps(model, pixels, text, opts.value_trick)
            for (i, (y0, x0, y1, x1)), maps in zip(chunk, cosine):
                maps = F.interpolate(maps[None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0]
                sums[i][:, y0:y1, x0:x1] += maps.softmax(0)
                counts[i][y0:y1, x0:x1] += 1
    return [s / c for s, c in zip(sums, counts)]


def upsample(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    return probs


def argmax_labels(probs: torch.Tensor) -> np.ndarray:
    return probs.argmax(0).to(torch.uint8 if probs.shape[0] <= 256 else torch.int64).cpu().numpy()


def things_only(probs: torch.Tensor, label: np.ndarray, things: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, label) in thing-index space: the argmax over the thing classes only, and the label with
    every non-thing pixel ignored (VOC20-style scoring of a dataset that also has stuff classes)."""
    lookup = np.full(max(len(probs), int(label.max()) + 1), IGNORE_INDEX, dtype=np.int64)
    lookup[list(things)] = np.arange(len(things))
    return argmax_labels(probs[list(things)]), lookup[label]


def _prepare(short_side: int, sample: SegSample) -> tuple[SegSample, torch.Tensor]:
    return sample, TF.to_tensor(resize_short_side(sample.image, short_side))


@dataclass
class SegResult:
    metrics: dict
    confusion: np.ndarray
    per_image: np.ndarray  # the per-image majority oracle's confusion (data only)
    things: np.ndarray | None  # things-only confusion, when the dataset declares thing classes


@torch.inference_mode()
def evaluate_model(model, name: str, dataset: SegDataset, opts: SegOptions, out_dir: Path,
                   device: torch.device) -> SegResult:
    if not getattr(model, "has_text", True):
        raise UserError(f"model {name} has no text tower; zero-shot segmentation needs one")
    num_classes = len(dataset.class_names)
    text = class_embeddings(model, dataset.class_names, opts.templates).to(device)
    confusion, oracle = ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)
    things = ConfusionMatrix(len(dataset.things)) if dataset.things else None
    loader = batches(dataset, opts.batch_size, opts.limit, opts.workers, partial(_prepare, opts.short_side))
    seen = 0
    for batch in tqdm(loader, desc=f"zeroshot-seg {name}", unit="batch"):
        probs = class_scores(model, [pixels for _, pixels in batch], text, opts)
        for (sample, pixels), p in zip(batch, probs):
            p = upsample(p, sample.label.shape)
            pred = argmax_labels(p)
            confusion.update(pred, sample.label)
            oracle.matrix += per_image_majority(sample.label, num_classes)
            if things is not None:
                things.update(*things_only(p, sample.label, dataset.things))
            if opts.save_predictions is not None:
                save_png(label_png(pred, num_classes), opts.save_predictions / name / f"{sample.name}.png")
            if seen < opts.overlays:
                panel = overlay_panel(sample.image, sample.label, pred, num_classes)
                save_png(panel, out_dir / "overlays" / name / f"{sample.name}.png")
            if seen == 0:
                save_png(pca_panel(TF.to_pil_image(pixels), _whole_image_patches(model, pixels, device)),
                         out_dir / "pca" / f"{name}.png")
            seen += 1
    metrics = segmentation_scores(confusion.matrix, dataset.class_names, dataset.background)
    if things is not None:
        metrics.update(things_scores(things.matrix))
    return SegResult(metrics, confusion.matrix, oracle.matrix, None if things is None else things.matrix)


def _whole_image_patches(model, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Plain (no value trick) patch features of one whole image, for the PCA map."""
    return model.encode_image(to_patch_multiple(pixels, model.patch_size)[None].to(device)).patches[0]


def run(models: dict, dataset: str, out_dir: Path, opts: SegOptions, load: ModelLoader) -> TaskResult:
    data = open_segmentation(dataset)
    opts.short_side = opts.short_side or data.short_side
    result = TaskResult(data.name)
    scored = None
    for name, spec in models.items():
        model, device = load(spec)
        scored = evaluate_model(model, name, data, opts, out_dir, device)
        result.models[name] = scored.metrics
        del model  # free it before the next model loads
    result.baselines = segmentation_baselines(scored.confusion, data.class_names, data.background,
                                              scored.per_image, scored.things)
    return result
