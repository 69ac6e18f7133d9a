"""One model's segmentation predictions, accumulated: the confusion matrix, the per-image majority oracle, the
things-only confusion (datasets that declare thing classes) and the PNGs of the first images. Shared by zero-shot
segmentation and the linear probe, so both score and draw the same way."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import functional as TF

from distill.eval.bootstrap import PerImage
from distill.eval.dense import upsample, whole_image_patches
from distill.eval.metrics import (IGNORE_INDEX, ConfusionMatrix, per_image_majority, segmentation_baselines,
                                  segmentation_scores, things_scores)
from distill.eval.readers import SegDataset, SegSample
from distill.eval.report import label_png, overlay_panel, pca_panel, save_png


def argmax_labels(scores: torch.Tensor) -> np.ndarray:
    return scores.argmax(0).to(torch.uint8 if scores.shape[0] <= 256 else torch.int64).cpu().numpy()


def things_only(scores: torch.Tensor, label: np.ndarray, things: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, label) in thing-index space: the argmax over the thing classes only, and the label with
    every non-thing pixel ignored (VOC20-style scoring of a dataset that also has stuff classes)."""
    lookup = np.full(max(len(scores), int(label.max()) + 1), IGNORE_INDEX, dtype=np.int64)
    lookup[list(things)] = np.arange(len(things))
    return argmax_labels(scores[list(things)]), lookup[label]


def _accumulate(total: ConfusionMatrix, per_image: PerImage, pred, label) -> None:
    image = ConfusionMatrix(total.num_classes, total.ignore_index)
    image.update(pred, label)
    total.matrix += image.matrix
    per_image.add(image.matrix)


@dataclass
class SegScorer:
    dataset: SegDataset
    name: str  # the model's, for the PNG paths
    out_dir: Path
    overlays: int  # images drawn as image | ground truth | prediction panels
    save_predictions: Path | None = None  # one label PNG per image

    def __post_init__(self):
        classes = len(self.dataset.class_names)
        self.confusion, self.oracle = ConfusionMatrix(classes), ConfusionMatrix(classes)
        self.things = ConfusionMatrix(len(self.dataset.things)) if self.dataset.things else None
        # for the bootstrap over images: {metric: per-image confusions}
        self.per_image = {"miou": PerImage(classes)}
        if self.things is not None:
            self.per_image["things_miou"] = PerImage(len(self.dataset.things))
        self.seen = 0

    def add(self, sample: SegSample, pixels: torch.Tensor, scores: torch.Tensor, model, device) -> None:
        """scores (C, h, w): upsampled bilinearly to the label, argmax."""
        scores = upsample(scores, sample.label.shape)
        pred, classes = argmax_labels(scores), len(self.dataset.class_names)
        _accumulate(self.confusion, self.per_image["miou"], pred, sample.label)
        self.oracle.matrix += per_image_majority(sample.label, classes)
        if self.things is not None:
            _accumulate(self.things, self.per_image["things_miou"],
                        *things_only(scores, sample.label, self.dataset.things))
        if self.save_predictions is not None:
            save_png(label_png(pred, classes, self.dataset.colours),
                     self.save_predictions / self.name / f"{sample.name}.png")
        if self.seen < self.overlays:
            save_png(overlay_panel(sample.image, sample.label, pred, self.dataset.class_names, self.dataset.colours),
                     self.out_dir / "overlays" / self.name / f"{sample.name}.png")
        if self.seen == 0:
            save_png(pca_panel(TF.to_pil_image(pixels), whole_image_patches(model, pixels, device)),
                     self.out_dir / "pca" / f"{self.name}.png")
        self.seen += 1

    def metrics(self) -> dict:
        scores = segmentation_scores(self.confusion.matrix, self.dataset.class_names, self.dataset.background)
        if self.things is not None:
            scores.update(things_scores(self.things.matrix))
        return scores

    def baselines(self) -> dict:
        """What trivial predictors reach on these labels (the same for every model)."""
        return segmentation_baselines(self.confusion.matrix, self.dataset.class_names, self.dataset.background,
                                      self.oracle.matrix, None if self.things is None else self.things.matrix)
