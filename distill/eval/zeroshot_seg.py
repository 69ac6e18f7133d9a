"""Zero-shot semantic segmentation with the TIPSv2 protocol (see shared/REFERENCE.md).

Short side -> `short_side` (bicubic), RGB in [0,1]; patch features with the MaskCLIP value trick;
class embeddings from the 9 TCL templates; sliding windows (or the whole image) whose patch-text
cosine maps are upsampled bilinearly to the window, softmaxed over classes, summed and divided by
the overlap count; the result is upsampled to the label size and the argmax scored.
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
from distill.eval.metrics import ConfusionMatrix, segmentation_baselines, segmentation_scores
from distill.eval.prompts import TCL_TEMPLATES, class_embeddings
from distill.eval.readers import SegDataset, SegSample, open_segmentation
from distill.eval.report import label_png, overlay_panel, pca_panel, save_png
from distill.eval.task import ModelLoader, TaskResult
from teachers.errors import UserError

Box = tuple[int, int, int, int]  # y0, x0, y1, x1


@dataclass
class SegOptions:
    short_side: int | None = 448  # None keeps the image size
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
        for name in ("short_side", "window", "stride", "batch_size", "limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"{name.replace('_', '-')} {value!r} is invalid; expected a positive integer")
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


def _round_up(size: int, patch: int) -> int:
    return math.ceil(size / patch) * patch


def class_probabilities(model, images: list[torch.Tensor], text: torch.Tensor, opts: SegOptions) -> list[torch.Tensor]:
    """Per image (C, H, W): window-averaged softmax over classes of the patch-text cosine maps.

    Windows whose size is not a multiple of the patch size are zero-padded at the bottom/right and the
    padding is cut off the upsampled maps. Windows of equal padded size share a forward pass, across images.
    """
    patch = model.patch_size
    device = text.device
    sums = [torch.zeros(len(text), *img.shape[-2:], device=device) for img in images]
    counts = [torch.zeros(img.shape[-2:], device=device) for img in images]
    groups: dict[tuple[int, int], list[tuple[int, Box]]] = defaultdict(list)
    for i, img in enumerate(images):
        for box in window_boxes(*img.shape[-2:], opts.window, opts.stride):
            groups[_round_up(box[2] - box[0], patch), _round_up(box[3] - box[1], patch)].append((i, box))
    for (ph, pw), members in groups.items():
        for start in range(0, len(members), opts.batch_size):
            chunk = members[start : start + opts.batch_size]
            pixels = torch.stack([
                F.pad(images[i][:, y0:y1, x0:x1], (0, pw - (x1 - x0), 0, ph - (y1 - y0)))
                for i, (y0, x0, y1, x1) in chunk
            ]).to(device)
            patches = F.normalize(model.encode_image(pixels, value_trick=opts.value_trick).patches.float(), dim=-1)
            cosine = torch.einsum("bhwd,cd->bchw", patches, text)
            cosine = F.interpolate(cosine, size=(ph, pw), mode="bilinear", align_corners=False)
            for (i, (y0, x0, y1, x1)), maps in zip(chunk, cosine):
                sums[i][:, y0:y1, x0:x1] += maps[:, : y1 - y0, : x1 - x0].softmax(0)
                counts[i][y0:y1, x0:x1] += 1
    return [s / c for s, c in zip(sums, counts)]


def upsample_argmax(probs: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    return probs.argmax(0).to(torch.uint8 if probs.shape[0] <= 256 else torch.int64).cpu().numpy()


def _prepare(short_side: int | None, sample: SegSample) -> tuple[SegSample, torch.Tensor]:
    return sample, TF.to_tensor(resize_short_side(sample.image, short_side))


@dataclass
class SegResult:
    metrics: dict
    confusion: np.ndarray


@torch.inference_mode()
def evaluate_model(model, name: str, dataset: SegDataset, opts: SegOptions, out_dir: Path,
                   device: torch.device) -> SegResult:
    if not getattr(model, "has_text", True):
        raise UserError(f"model {name} has no text tower; zero-shot segmentation needs one")
    text = class_embeddings(model, dataset.class_names, opts.templates).to(device)
    confusion = ConfusionMatrix(len(dataset.class_names))
    loader = batches(dataset, opts.batch_size, opts.limit, opts.workers, partial(_prepare, opts.short_side))
    drawn = 0
    for batch in tqdm(loader, desc=f"zeroshot-seg {name}", unit="batch"):
        probs = class_probabilities(model, [pixels for _, pixels in batch], text, opts)
        for (sample, pixels), p in zip(batch, probs):
            pred = upsample_argmax(p, sample.label.shape)
            confusion.update(pred, sample.label)
            if opts.save_predictions is not None:
                save_png(label_png(pred, len(dataset.class_names)), opts.save_predictions / name / f"{sample.name}.png")
            if drawn < opts.overlays:
                panel = overlay_panel(sample.image, sample.label, pred, len(dataset.class_names))
                save_png(panel, out_dir / "overlays" / name / f"{sample.name}.png")
                if drawn == 0:
                    save_png(pca_panel(TF.to_pil_image(pixels), _whole_image_patches(model, pixels, device)),
                             out_dir / "pca" / f"{name}.png")
                drawn += 1
    metrics = segmentation_scores(confusion.matrix, dataset.class_names, dataset.background)
    return SegResult(metrics, confusion.matrix)


def _whole_image_patches(model, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Plain (no value trick) patch features of one image, padded to the patch size, for the PCA map."""
    patch = model.patch_size
    h, w = pixels.shape[-2:]
    padded = F.pad(pixels, (0, _round_up(w, patch) - w, 0, _round_up(h, patch) - h))
    return model.encode_image(padded[None].to(device), value_trick=False).patches[0]


def run(models: dict, dataset: str, out_dir: Path, opts: SegOptions, load: ModelLoader) -> TaskResult:
    data = open_segmentation(dataset)
    result = TaskResult(data.name)
    confusion = None
    for name, spec in models.items():
        model, device = load(spec)
        scored = evaluate_model(model, name, data, opts, out_dir, device)
        result.models[name] = scored.metrics
        confusion = scored.confusion
        del model
    result.baselines = segmentation_baselines(confusion, data.class_names, data.background)
    return result
