"""Scores computed from predictions: segmentation confusion matrices, retrieval recall, top-k accuracy.

All percentages. Segmentation scores come from one (C, C) confusion matrix (rows = label, columns =
prediction) so that every metric and baseline is a pure function of it and easy to check by hand.
"""
from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = 255


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred, label) -> None:
        pred = torch.as_tensor(pred).reshape(-1).long().cpu()
        label = torch.as_tensor(label).reshape(-1).long().cpu()
        if pred.shape != label.shape:
            raise ValueError(f"prediction has {pred.numel()} pixels, label {label.numel()}")
        keep = label != self.ignore_index
        pred, label = pred[keep], label[keep]
        c = self.num_classes
        counts = torch.bincount(label * c + pred, minlength=c * c)
        self.matrix += counts.reshape(c, c).numpy()


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """IoU in percent per class; NaN where the union is empty (class neither labelled nor predicted). A stack of
    matrices (..., C, C) gives (..., C): the bootstrap scores many resamples at once."""
    tp = np.diagonal(matrix, axis1=-2, axis2=-1).astype(np.float64)
    union = matrix.sum(-2) + matrix.sum(-1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, 100.0 * tp / union, np.nan)


def mean_iou(matrix: np.ndarray) -> float:
    iou = iou_per_class(matrix)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def _accuracy(matrix: np.ndarray, rows: np.ndarray) -> float:
    total = matrix[rows].sum()
    return float(100.0 * np.diag(matrix)[rows].sum() / total) if total else float("nan")


def _all_rows(matrix: np.ndarray) -> np.ndarray:
    return np.ones(matrix.shape[0], dtype=bool)


def segmentation_scores(matrix: np.ndarray, class_names: list[str], background: int | None) -> dict:
    """mIoU, pixel accuracy and per-class IoU; with a background class (VOC), also the accuracy on the
    other pixels (`object_pixel_acc`), since a model biased to the background scores a deceptive mIoU."""
    iou = iou_per_class(matrix)
    scores = {
        "miou": mean_iou(matrix),
        "pixel_acc": _accuracy(matrix, _all_rows(matrix)),
        "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou)},
    }
    if background is not None:
        scores["object_pixel_acc"] = _accuracy(matrix, np.arange(matrix.shape[0]) != background)
    return scores


def things_scores(matrix: np.ndarray) -> dict:
    """The VOC20-style figure: on pixels labelled with a thing class, the argmax over thing classes only
    (`matrix` is that things-only confusion), so the stuff classes neither help nor hurt."""
    return {"things_miou": mean_iou(matrix), "things_pixel_acc": _accuracy(matrix, _all_rows(matrix))}


def per_image_majority(label: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The confusion of an oracle that labels the whole image with its most frequent labelled class."""
    valid = label[label != ignore_index].astype(np.int64).reshape(-1)
    counts = np.bincount(valid, minlength=num_classes)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    if counts.sum():
        matrix[:, int(np.argmax(counts))] = counts
    return matrix


def _constant(matrix: np.ndarray, column: int) -> np.ndarray:
    constant = np.zeros_like(matrix)
    constant[:, column] = matrix.sum(1)
    return constant


def segmentation_baselines(matrix: np.ndarray, class_names: list[str], background: int | None,
                           per_image: np.ndarray | None = None, things: np.ndarray | None = None) -> dict:
    """What trivial predictors reach on the same labels (they depend on the data only, not on a model).

    matrix: any model's confusion (only its row sums, the label counts, are used); per_image: the
    `per_image_majority` confusions summed over the images; things: a things-only confusion.
    """
    majority = int(np.argmax(matrix.sum(1)))
    constant = _constant(matrix, majority)
    out = {
        "majority_class": class_names[majority],
        "majority_class_miou": mean_iou(constant),
        "majority_class_pixel_acc": _accuracy(constant, _all_rows(matrix)),
    }
    if per_image is not None:
        out["per_image_majority_miou"] = mean_iou(per_image)
        out["per_image_majority_pixel_acc"] = _accuracy(per_image, _all_rows(per_image))
    if background is not None:
        object_counts = np.delete(matrix.sum(1), background)
        out["chance_object_pixel_acc"] = 100.0 / len(object_counts) if len(object_counts) else float("nan")
        out["majority_object_pixel_acc"] = (float(100.0 * object_counts.max() / object_counts.sum())
                                            if object_counts.sum() else float("nan"))
    if things is not None:
        thing_majority = _constant(things, int(np.argmax(things.sum(1))))
        out["chance_things_pixel_acc"] = 100.0 / things.shape[0]
        out["majority_things_miou"] = mean_iou(thing_majority)
        out["majority_things_pixel_acc"] = _accuracy(thing_majority, _all_rows(things))
    return out


def recall_at_k(similarity: torch.Tensor, positives: torch.Tensor, ks=(1, 5, 10)) -> dict[int, float]:
    """similarity (Q, N); positives (Q, N) bool. Recall@k = % of queries with a positive in the top k."""
    top = similarity.topk(min(max(ks), similarity.shape[1]), dim=1).indices
    hits = positives.gather(1, top)
    return {k: float(100.0 * hits[:, :k].any(1).float().mean()) for k in ks}


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> dict[int, float]:
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    correct = top == targets[:, None]
    return {k: float(100.0 * correct[:, :k].any(1).float().mean()) for k in ks}


class LinearCKA:
    """Linear CKA between two feature sets seen in chunks (rows = the same tokens in both).

    Accumulates first and second moments in float64, so memory is O(D^2), not O(N^2), for any number of
    tokens: CKA = ||Cxy||_F^2 / (||Cxx||_F ||Cyy||_F) with centred cross-covariances C.
    """

    def __init__(self):
        self.n = 0
        self.moments: list[torch.Tensor] | None = None

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
        new = [x.sum(0), y.sum(0), x.T @ x, y.T @ y, x.T @ y]
        self.moments = new if self.moments is None else [a + b for a, b in zip(self.moments, new)]
        self.n += x.shape[0]

    def value(self) -> float:
        if self.moments is None or self.n < 2:
            return float("nan")
        sx, sy, sxx, syy, sxy = self.moments
        n = self.n
        cxx = sxx - torch.outer(sx, sx) / n
        cyy = syy - torch.outer(sy, sy) / n
        cxy = sxy - torch.outer(sx, sy) / n
        denominator = torch.linalg.norm(cxx) * torch.linalg.norm(cyy)
        return float(torch.linalg.norm(cxy) ** 2 / denominator) if denominator > 0 else float("nan")


# Rows 45:471, columns 41:601 of NYUv2's 480x640 frames (Eigen et al., NIPS 2014; as BTS, AdaBins and DINOv2
# score it), as fractions so the crop also applies to frames stored at another size.
EIGEN_CROP = (45 / 480, 471 / 480, 41 / 640, 601 / 640)
LOWER_IS_BETTER = ("rmse", "abs_rel", "log10")  # depth errors; every other metric is a score


def eigen_crop_mask(shape: tuple[int, int]) -> torch.Tensor:
    h, w = shape
    y0, y1, x0, x1 = (round(f * s) for f, s in zip(EIGEN_CROP, (h, h, w, w)))
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def depth_errors(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """The standard monocular depth metrics over matching positive depths (metres): rmse (m), abs_rel,
    log10, and delta1..3, the % of pixels whose ratio max(pred/gt, gt/pred) is below 1.25, 1.25^2, 1.25^3."""
    pred, gt = pred.double().reshape(-1), gt.double().reshape(-1)
    ratio = torch.maximum(pred / gt, gt / pred)
    errors = {
        "rmse": float(((pred - gt) ** 2).mean().sqrt()),
        "abs_rel": float(((pred - gt).abs() / gt).mean()),
        "log10": float((pred.log10() - gt.log10()).abs().mean()),
    }
    errors.update({f"delta{k}": float(100.0 * (ratio < 1.25**k).double().mean()) for k in (1, 2, 3)})
    return errors


class DepthMeter:
    """Per-image depth errors averaged over the images (as BTS, AdaBins and DINOv2's depth evaluation do).

    A pixel is scored where the ground truth lies strictly inside (min_depth, max_depth) (and inside the Eigen
    crop if asked); predictions are clipped to [min_depth, max_depth] first.
    """

    def __init__(self, min_depth: float, max_depth: float, eigen_crop: bool = False):
        self.min_depth, self.max_depth, self.eigen_crop = min_depth, max_depth, eigen_crop
        self.sums: dict[str, float] = {}
        self.images = 0

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        pred, gt = pred.detach().float().cpu(), torch.as_tensor(gt).float()
        valid = (gt > self.min_depth) & (gt < self.max_depth)
        if self.eigen_crop:
            valid &= eigen_crop_mask(tuple(gt.shape))
        if not valid.any():
            return
        pred = pred.nan_to_num(self.min_depth, self.max_depth, self.min_depth).clamp(self.min_depth, self.max_depth)
        for key, value in depth_errors(pred[valid], gt[valid]).items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.images += 1

    def result(self) -> dict[str, float]:
        keys = ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")
        return {key: self.sums[key] / self.images if self.images else float("nan") for key in keys}
