"""Evaluation sampling error: the percentile bootstrap over images (Efron & Tibshirani, "An Introduction to the
Bootstrap", 1993). Segmentation scores are ratios of counts summed over images, so a resample is the per-image
confusion matrices summed with multinomial weights; every model is resampled with the same weights, which makes
the intervals of differences between models paired (the same images in every resample)."""
from __future__ import annotations

import warnings

import numpy as np

from distill.eval.metrics import iou_per_class

SAMPLES = 1000
SEED = 0  # a fixed seed: the same report for the same predictions
_CHUNK = 200  # resamples summed at once: bounds memory for many classes (ADE20K: 150 x 150 per resample)


class PerImage:
    """Per-image confusion matrices, stored sparse (an image holds few of a dataset's classes)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.images: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, matrix: np.ndarray) -> None:
        flat = matrix.reshape(-1)
        index = np.flatnonzero(flat)
        self.images.append((index, flat[index]))


def resample_weights(images: int, samples: int = SAMPLES, seed: int = SEED) -> np.ndarray:
    """(samples, images): how often each image is drawn in each resample."""
    return np.random.default_rng(seed).multinomial(images, np.full(images, 1.0 / images), size=samples)


def resampled_miou(per_image: PerImage, weights: np.ndarray) -> np.ndarray:
    """mIoU (percent) of each resample: classes with an empty union are left out, as `metrics.mean_iou` does."""
    c = per_image.num_classes
    out = []
    for start in range(0, len(weights), _CHUNK):
        w = weights[start:start + _CHUNK].astype(np.float64)
        summed = np.zeros((len(w), c * c))
        for i, (index, counts) in enumerate(per_image.images):
            summed[:, index] += w[:, i:i + 1] * counts
        iou = iou_per_class(summed.reshape(-1, c, c))
        with warnings.catch_warnings():  # a resample without any labelled class scores NaN, as mean_iou does
            warnings.simplefilter("ignore", RuntimeWarning)
            out.append(np.nanmean(iou, axis=1))
    return np.concatenate(out)


def interval(samples: np.ndarray) -> list[float]:
    return [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]


def bootstrap_scores(named: dict[str, dict[str, PerImage]]) -> dict:
    """named: {model: {metric: PerImage}}, all over the same images in the same order. 95% intervals per model and
    metric, and of each model's difference from the first model (its point value: every image drawn once)."""
    first = next(iter(named))
    images = len(next(iter(named[first].values())).images)
    if images < 2 or any(len(p.images) != images for m in named.values() for p in m.values()):
        return {}
    point = {name: {metric: float(resampled_miou(p, np.ones((1, images), dtype=np.int64))[0])
                    for metric, p in metrics.items()} for name, metrics in named.items()}
    weights = resample_weights(images)
    draws = {name: {metric: resampled_miou(p, weights) for metric, p in metrics.items()}
             for name, metrics in named.items()}
    out = {"method": "percentile bootstrap over images, paired across models", "samples": SAMPLES,
           "images": images, "seed": SEED,
           "ci95": {name: {metric: interval(d) for metric, d in metrics.items()} for name, metrics in draws.items()},
           "differences": {}}
    for name in list(named)[1:]:
        out["differences"][f"{name} - {first}"] = {
            metric: {"difference": point[name][metric] - point[first][metric],
                     "ci95": interval(draws[name][metric] - draws[first][metric])}
            for metric in draws[name] if metric in draws[first]}
    return out
