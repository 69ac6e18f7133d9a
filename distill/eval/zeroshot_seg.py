"""Zero-shot semantic segmentation with the TIPSv2 protocol (the official google-deepmind/tips zero-shot
segmentation notebook).

Short side -> `short_side` (bicubic), RGB in [0,1]; patch features with the MaskCLIP value trick;
class embeddings from the 9 TCL templates; sliding windows whose patch-text cosine maps are upsampled
bilinearly to the window, softmaxed over classes, summed and divided by the overlap count, or the whole
image's cosine maps as they are; the result is upsampled to the label size and the argmax scored.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from distill.eval.dense import window_boxes  # noqa: F401 (part of this module's interface before dense.py)
from distill.eval.dense import slide_average, to_patch_multiple, upsample, whole_image_patches
from distill.eval.inputs import batches, resized_sample
from distill.eval.metrics import (IGNORE_INDEX, ConfusionMatrix, per_image_majority, segmentation_baselines, segmentation_scores,
                                  things_scores)
from distill.eval.prompts import TCL_TEMPLATES, class_embeddings
from distill.eval.readers import SegDataset, open_segmentation
from distill.eval.report import label_png, overlay_panel, pca_panel, save_png
from distill.eval.task import ModelLoader, TaskResult, check_positive, parse_resolutions, per_resolution, tagged
from tipscore.errors import UserError


@dataclass
class SegOptions:
    short_side: int | None = None  # None: the dataset's protocol size (448; built-in scenes: their size)
    window: int | None = 448  # None: the whole image in one pass
    stride: int = 336
    value_trick: bool = True
    templates: tuple[str, ...] = TCL_TEMPLATES
    batch_size: int = 8  # images per data batch, and windows per forward pass
    limit: int | None = None
    workers: int = 0
    overlays: int = 4  # images per model drawn as PNG overlays
    save_predictions: Path | None = None
    resolutions: tuple[int, ...] | None = None  # short sides, each with a window of that side (`miou@448`)

    def __post_init__(self):
        self.templates = tuple(self.templates)
        self.resolutions = parse_resolutions(self.resolutions)
        if self.short_side is not None and self.resolutions is not None:
            raise UserError(f"short-side {self.short_side} and resolutions {','.join(map(str, self.resolutions))} "
                            "both set the short side; expected one of them")
        if self.save_predictions is not None:
            self.save_predictions = Path(self.save_predictions)
        check_positive(self, "short_side", "window", "stride", "batch_size", "limit")
        if self.overlays < 0:
            raise UserError(f"overlays {self.overlays} is invalid; expected 0 or more")
        if self.window is not None and self.stride > self.window:
            raise UserError(f"stride {self.stride} is larger than the window {self.window}; "
                            "pixels between windows would get no prediction")

    def at(self, resolution: int) -> "SegOptions":
        """One evaluation at `resolution`: the short side and the sliding window (if any) are `resolution`, the
        stride keeps its ratio to the window (336 / 448), so the model really sees inputs of that size."""
        if self.window is None:
            return replace(self, short_side=resolution, resolutions=None)
        stride = max(1, round(resolution * self.stride / self.window))
        return replace(self, short_side=resolution, window=resolution, stride=stride, resolutions=None)


def _cosine_maps(model, pixels: torch.Tensor, text: torch.Tensor, value_trick: bool) -> torch.Tensor:
    """(B, 3, H, W) -> (B, C, h, w) patch-text cosines on the patch grid."""
    patches = F.normalize(model.encode_image(pixels, value_trick=value_trick).patches.float(), dim=-1)
    return torch.einsum("bhwd,cd->bchw", patches, text)


def class_scores(model, images: list[torch.Tensor], text: torch.Tensor, opts: SegOptions) -> list[torch.Tensor]:
    """Per image (C, h, w) class scores whose bilinear upsampling to the label size is argmaxed.

    Whole image (`window=None`, the notebook's `predict_whole`): the raw cosine maps on the patch grid.
    Sliding windows (`predict_slide`): per window, the cosine maps upsampled to the window's own size and
    softmaxed over classes, summed and divided by the overlap count, at the image's resolution.
    """
    patch, device = model.patch_size, text.device
    if opts.window is None:
        return [_cosine_maps(model, to_patch_multiple(img, patch)[None].to(device), text, opts.value_trick)[0]
                for img in images]
    return slide_average(images, lambda pixels: _cosine_maps(model, pixels, text, opts.value_trick),
                         window=opts.window, stride=opts.stride, batch_size=opts.batch_size, patch=patch,
                         device=device, post=lambda maps: maps.softmax(0))


def argmax_labels(probs: torch.Tensor) -> np.ndarray:
    return probs.argmax(0).to(torch.uint8 if probs.shape[0] <= 256 else torch.int64).cpu().numpy()


def things_only(probs: torch.Tensor, label: np.ndarray, things: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, label) in thing-index space: the argmax over the thing classes only, and the label with
    every non-thing pixel ignored (VOC20-style scoring of a dataset that also has stuff classes)."""
    lookup = np.full(max(len(probs), int(label.max()) + 1), IGNORE_INDEX, dtype=np.int64)
    lookup[list(things)] = np.arange(len(things))
    return argmax_labels(probs[list(things)]), lookup[label]


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
    loader = batches(dataset, opts.batch_size, opts.limit, opts.workers, partial(resized_sample, opts.short_side))
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
                save_png(pca_panel(TF.to_pil_image(pixels), whole_image_patches(model, pixels, device)),
                         out_dir / "pca" / f"{name}.png")
            seen += 1
    metrics = segmentation_scores(confusion.matrix, dataset.class_names, dataset.background)
    if things is not None:
        metrics.update(things_scores(things.matrix))
    return SegResult(metrics, confusion.matrix, oracle.matrix, None if things is None else things.matrix)


def run(models: dict, dataset: str, out_dir: Path, opts: SegOptions, load: ModelLoader) -> TaskResult:
    data = open_segmentation(dataset)
    scored: list[SegResult] = []

    def evaluate(model, name, device, resolution, setting):
        scored.append(evaluate_model(model, tagged(name, resolution), data, setting, out_dir, device))
        return scored[-1].metrics

    if opts.resolutions is None:
        opts.short_side = opts.short_side or data.short_side
        runs = [(None, opts)]
    else:
        runs = [(resolution, opts.at(resolution)) for resolution in opts.resolutions]
    result = TaskResult(data.name, per_resolution(models, load, runs, evaluate))
    last = scored[-1]  # the baselines depend on the labels only
    result.baselines = segmentation_baselines(last.confusion, data.class_names, data.background, last.per_image,
                                              last.things)
    return result
