"""Segmentation, retrieval and classification scores against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from distill.eval.metrics import (IGNORE_INDEX, ConfusionMatrix, LinearCKA, mean_iou, recall_at_k,
                                  per_image_majority, segmentation_baselines, segmentation_scores,
                                  things_scores, topk_accuracy)

CLASSES = ["background", "cat", "dog", "bird"]


def _confusion(pred, label, num_classes=4):
    conf = ConfusionMatrix(num_classes)
    conf.update(np.array(pred), np.array(label))
    return conf.matrix


def test_miou_by_hand_with_ignored_absent_and_prediction_only_classes():
    label = [0, 0, 0, 1, 1, IGNORE_INDEX, IGNORE_INDEX, 0]
    pred = [0, 0, 1, 1, 2, 3, 3, 2]
    m = _confusion(pred, label)
    # Ignored pixels vanish entirely (their predictions of class 3 do not count): bird has an empty union.
    # background: tp 2, label 4, pred 2 -> 2/4; cat: tp 1, label 2, pred 2 -> 1/3; dog only predicted -> 0/2.
    scores = segmentation_scores(m, CLASSES, background=0)
    assert scores["per_class_iou"] == pytest.approx({"background": 50.0, "cat": 100 / 3, "dog": 0.0, "bird": None})
    assert scores["miou"] == pytest.approx((50.0 + 100 / 3 + 0.0) / 3)
    assert scores["pixel_acc"] == pytest.approx(100 * 3 / 6)
    assert scores["object_pixel_acc"] == pytest.approx(100 * 1 / 2)


def test_perfect_predictions_give_100():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (16, 16))
    label[0, :5] = IGNORE_INDEX
    pred = np.where(label == IGNORE_INDEX, 2, label)
    scores = segmentation_scores(_confusion(pred, label), CLASSES, background=0)
    assert scores["miou"] == scores["pixel_acc"] == scores["object_pixel_acc"] == 100.0


def test_baselines_by_hand():
    label = [0, 0, 0, 0, 0, 0, 1, 1, 2, IGNORE_INDEX]
    m = _confusion(label[:-1] + [0], label)
    base = segmentation_baselines(m, CLASSES, background=0)
    # majority (= background) everywhere: IoU_bg = 6/9, cat 0, dog 0 (bird absent) -> mean over 3 classes.
    assert base["majority_class"] == "background"
    assert base["majority_class_miou"] == pytest.approx(100 * (6 / 9) / 3)
    assert base["majority_class_pixel_acc"] == pytest.approx(100 * 6 / 9)
    assert base["chance_object_pixel_acc"] == pytest.approx(100 / 3)
    assert base["majority_object_pixel_acc"] == pytest.approx(100 * 2 / 3)


def test_per_image_majority_oracle_and_things_only_scores_by_hand():
    # Image 1: 3 cat, 1 dog -> all cat; image 2: 2 bird, 1 background, 1 ignored -> all bird.
    one = np.array([[1, 1], [1, 2]])
    two = np.array([[3, 3], [0, IGNORE_INDEX]])
    oracle = per_image_majority(one, 4) + per_image_majority(two, 4)
    assert oracle[1, 1] == 3 and oracle[2, 1] == 1 and oracle[3, 3] == 2 and oracle[0, 3] == 1
    assert oracle.sum() == 7
    m = _confusion([1, 1, 1, 2, 3, 3, 0], [1, 1, 1, 2, 3, 3, 0])
    base = segmentation_baselines(m, CLASSES, None, per_image=oracle)
    assert base["per_image_majority_pixel_acc"] == pytest.approx(100 * 5 / 7)
    # IoU: background 0/1, cat 3/4, dog 0/1, bird 2/3.
    assert base["per_image_majority_miou"] == pytest.approx(100 * (0 + 3 / 4 + 0 + 2 / 3) / 4)
    things = _confusion([0, 0, 1, 2], [0, 1, 1, 2], num_classes=3)
    assert things_scores(things) == pytest.approx({"things_miou": 100 * (1 / 2 + 1 / 2 + 1) / 3,
                                                   "things_pixel_acc": 75.0})
    base = segmentation_baselines(m, CLASSES, None, things=things)
    assert base["chance_things_pixel_acc"] == pytest.approx(100 / 3)
    assert base["majority_things_pixel_acc"] == pytest.approx(50.0)  # class 1 (2 of 4 pixels) everywhere


def test_datasets_without_background_report_no_object_accuracy():
    label = [1, 1, 1, 2, 3]
    m = _confusion([1, 1, 2, 2, 3], label)
    base = segmentation_baselines(m, CLASSES, background=None)
    assert base["majority_class"] == "cat" and "chance_object_pixel_acc" not in base
    scores = segmentation_scores(m, CLASSES, background=None)
    assert "object_pixel_acc" not in scores
    assert scores["pixel_acc"] == pytest.approx(80.0)


def test_mean_iou_is_nan_without_any_labelled_or_predicted_pixel():
    assert math.isnan(mean_iou(np.zeros((3, 3), dtype=np.int64)))


def test_recall_and_topk_by_hand():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.1, 0.7, 0.6]])
    positives = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.bool)
    # query 0: rank 0; query 1: positive ranked 3rd; query 2: positive ranked 2nd
    assert recall_at_k(sim, positives, (1, 2, 3)) == pytest.approx({1: 100 / 3, 2: 200 / 3, 3: 100.0})
    acc = topk_accuracy(sim, torch.tensor([0, 1, 2]), (1, 2))
    assert acc == pytest.approx({1: 100 / 3, 2: 100.0})


def test_linear_cka_chunked_equals_direct_and_is_invariant_to_rotation_and_scale():
    torch.manual_seed(0)
    x = torch.randn(200, 6)
    y = x @ torch.linalg.qr(torch.randn(6, 6))[0] * 3 + 1
    cka = LinearCKA()
    for i in range(0, 200, 64):
        cka.update(x[i : i + 64], y[i : i + 64])
    assert cka.value() == pytest.approx(1.0, abs=1e-9)
    z = torch.randn(200, 5)
    xc, zc = x - x.mean(0), z - z.mean(0)
    direct = (torch.linalg.norm(xc.T @ zc) ** 2 / (torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(zc.T @ zc))).item()
    other = LinearCKA()
    other.update(x, z)
    assert other.value() == pytest.approx(direct, rel=1e-6)
    assert other.value() < 0.5


def test_expected_random_recall_by_hand_and_against_sampling():
    from distill.eval.retrieval import expected_random_recall

    # 1 positive among 4: recall@1 = 1/4, recall@2 = 1/2; 2 positives among 4: recall@1 = 1/2, @2 = 1 - 1/6.
    positives = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert expected_random_recall(positives, 1) == pytest.approx(100 * (1 / 4 + 1 / 2) / 2)
    assert expected_random_recall(positives, 2) == pytest.approx(100 * (1 / 2 + 5 / 6) / 2)
    draws = [recall_at_k(torch.rand(2, 4, generator=torch.Generator().manual_seed(s)), positives, (2,))[2]
             for s in range(4000)]
    assert sum(draws) / len(draws) == pytest.approx(expected_random_recall(positives, 2), abs=1.5)


def test_ties_are_not_bolded():
    from distill.eval.report import markdown_table

    table = markdown_table({"models": {"a": {"miou": 50.0, "pixel_acc": 70.0}, "b": {"miou": 50.0, "pixel_acc": 60.0}}})
    assert "| miou | 50.00 | 50.00 |" in table and "| pixel_acc | **70.00** | 60.00 |" in table
