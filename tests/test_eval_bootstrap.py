"""Bootstrap intervals over images: resamples are per-image confusions summed with multinomial weights, and every
model is resampled with the same weights (paired differences)."""
from __future__ import annotations

import numpy as np
import pytest

from distill.eval.bootstrap import PerImage, bootstrap_scores, resample_weights, resampled_miou
from distill.eval.metrics import mean_iou


def _per_image(matrices) -> PerImage:
    per_image = PerImage(matrices[0].shape[0])
    for m in matrices:
        per_image.add(np.asarray(m))
    return per_image


def test_a_resample_that_draws_every_image_once_is_the_point_score():
    rng = np.random.default_rng(0)
    matrices = [rng.integers(0, 20, (3, 3)) for _ in range(6)]
    ones = np.ones((1, 6), dtype=np.int64)
    assert resampled_miou(_per_image(matrices), ones)[0] == pytest.approx(mean_iou(sum(matrices)))
    weights = resample_weights(6, samples=50)
    assert weights.shape == (50, 6) and (weights.sum(1) == 6).all()


def test_paired_intervals_of_identical_and_different_models():
    rng = np.random.default_rng(1)
    good = [np.diag(rng.integers(5, 10, 3)) + rng.integers(0, 2, (3, 3)) for _ in range(40)]
    bad = [m.T[::-1] for m in good]  # mostly wrong predictions on the same labels
    out = bootstrap_scores({"a": {"miou": _per_image(good)}, "b": {"miou": _per_image(good)},
                            "c": {"miou": _per_image(bad)}})
    assert out["images"] == 40 and out["differences"]["b - a"]["miou"]["ci95"] == [0.0, 0.0]
    low, high = out["ci95"]["a"]["miou"]
    assert low <= mean_iou(sum(good)) <= high
    assert out["differences"]["c - a"]["miou"]["ci95"][1] < 0
    assert out["differences"]["c - a"]["miou"]["difference"] == pytest.approx(mean_iou(sum(bad)) - mean_iou(sum(good)))
