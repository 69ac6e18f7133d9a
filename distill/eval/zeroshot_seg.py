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

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from distill.eval.bootstrap import bootstrap_scores
from distill.eval.dense import ceil_to_patch, slide_average, to_patch_multiple
from distill.eval.inputs import Batches, resized_sample
from distill.eval.prompts import TCL_TEMPLATES, class_embeddings
from distill.eval.readers import SegDataset, open_segmentation
from distill.eval.seg_scoring import SegScorer
from distill.eval.task import (
    ModelLoader, TaskResult, check_positive, parse_resolutions, per_resolution, require_text, tagged,
)
from common.errors import UserError


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


def input_side(model, _, opts: SegOptions) -> int:
    """The side the model sees: the window (an image smaller than it is one window), else the short side."""
    return ceil_to_patch(min(opts.window or opts.short_side, opts.short_side), model.patch_size)


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


@torch.inference_mode()
def evaluate_model(model, name: str, dataset: SegDataset, opts: SegOptions, out_dir: Path,
                   device: torch.device) -> SegScorer:
    require_text(model, name, "zero-shot segmentation")
    text = class_embeddings(model, dataset.class_names, opts.templates).to(device)
    scorer = SegScorer(dataset, name, out_dir, opts.overlays, opts.save_predictions)
    loader = Batches(dataset, opts.batch_size, opts.limit, opts.workers, partial(resized_sample, opts.short_side))
    for batch in tqdm(loader, desc=f"zeroshot-seg {name}", unit="batch"):
        scores = class_scores(model, [pixels for _, pixels in batch], text, opts)
        for (sample, pixels), sample_scores in zip(batch, scores):
            scorer.add(sample, pixels, sample_scores, model, device)
    return scorer


def run(models: dict, dataset: str, out_dir: Path, opts: SegOptions, load: ModelLoader) -> TaskResult:
    data = open_segmentation(dataset)
    scored: list[SegScorer] = []

    def evaluate(model, name, device, resolution, setting):
        scored.append(evaluate_model(model, tagged(name, resolution), data, setting, out_dir, device))
        return scored[-1].metrics()

    if opts.resolutions is None:
        opts.short_side = opts.short_side or data.short_side
        runs = [(None, opts)]
    else:
        runs = [(resolution, opts.at(resolution)) for resolution in opts.resolutions]
    result = TaskResult(data.name, per_resolution(models, load, runs, evaluate, input_side))
    result.baselines = scored[-1].baselines()  # the labels' alone
    result.bootstrap = bootstrap_scores({s.name: s.per_image for s in scored})
    return result
