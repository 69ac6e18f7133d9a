"""Linear-probe semantic segmentation, DINOv2's linear protocol (arXiv 2304.07193, "lin."): BatchNorm + a
1x1 convolution on the frozen last-layer patch features, trained with cross-entropy on the dataset's train
split (logits upsampled bilinearly to the crop), mIoU and pixel accuracy on its val split (sliding windows,
logits averaged where windows overlap, upsampled to the label size, argmax).

DINOv2's ADE20K defaults: 40,000 iterations, 512 px crops, batch 16, AdamW lr 1e-3, window 512 / stride 341
(`distill.eval.probe` has the schedule and how training crops are cached).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from distill.eval.dense import upsample, whole_image_patches
from distill.eval.inputs import batches, resized_sample
from distill.eval.metrics import (IGNORE_INDEX, ConfusionMatrix, per_image_majority, segmentation_baselines,
                                  segmentation_scores)
from distill.eval.probe import (FeatureStore, LinearHead, ProbeOptions, extract_training_set, patch_features, predict,
                                seeded_init, train_head)
from distill.eval.readers import ProbeProtocol, SegDataset, open_segmentation
from distill.eval.report import overlay_panel, pca_panel, save_png
from distill.eval.task import ModelLoader, TaskResult, per_resolution, tagged
from distill.eval.zeroshot_seg import argmax_labels


def label_target(sample) -> torch.Tensor:
    return torch.from_numpy(sample.label.astype(np.uint8))  # class indices < 255, 255 = ignore


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the logits upsampled to the label crop, averaged over the labelled pixels."""
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    labels = labels.long()
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp_min(1)  # an all-ignored batch gives 0, not NaN


def train_linear_head(model, name: str, device: torch.device, train: SegDataset, protocol: ProbeProtocol,
                      opts: ProbeOptions) -> LinearHead:
    store = FeatureStore(None if opts.feature_cache is None else opts.feature_cache / f"{name}@{protocol.size}")
    try:
        extract_training_set(model, device, train, patch_features, label_target, protocol, opts, store, name)
        head = seeded_init(opts.seed, lambda: LinearHead(store.widths[0], len(train.class_names)))
        return train_head(head, store, segmentation_loss, protocol, opts.seed, device, name)
    finally:
        store.close()


@torch.inference_mode()
def score(model, head: LinearHead, name: str, device: torch.device, val: SegDataset, protocol: ProbeProtocol,
          opts: ProbeOptions, out_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(confusion, the per-image majority oracle's confusion) on the val split; PNG panels on the way."""
    num_classes = len(val.class_names)
    confusion, oracle = ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)
    loader = batches(val, protocol.batch_size, opts.limit, opts.workers, partial(resized_sample, protocol.size))
    seen = 0
    for batch in tqdm(loader, desc=f"linear-seg {name}", unit="batch"):
        logits = predict(model, head, patch_features, [pixels for _, pixels in batch], protocol.size,
                         protocol.batch_size, device)
        for (sample, pixels), scores in zip(batch, logits):
            pred = argmax_labels(upsample(scores, sample.label.shape))
            confusion.update(pred, sample.label)
            oracle.matrix += per_image_majority(sample.label, num_classes)
            if seen < opts.overlays:
                panel = overlay_panel(sample.image, sample.label, pred, num_classes)
                save_png(panel, out_dir / "overlays" / name / f"{sample.name}.png")
            if seen == 0:
                save_png(pca_panel(TF.to_pil_image(pixels), whole_image_patches(model, pixels, device)),
                         out_dir / "pca" / f"{name}.png")
            seen += 1
    return confusion.matrix, oracle.matrix


def run(models: dict, dataset: str, out_dir: Path, opts: ProbeOptions, load: ModelLoader) -> TaskResult:
    val, train = open_segmentation(dataset), open_segmentation(dataset, "train")
    confusions: list[tuple[np.ndarray, np.ndarray]] = []

    def evaluate(model, name, device, resolution, protocol):
        head = train_linear_head(model, tagged(name, resolution), device, train, protocol, opts)
        confusions.append(score(model, head, tagged(name, resolution), device, val, protocol, opts, out_dir))
        return segmentation_scores(confusions[-1][0], val.class_names, val.background)

    result = TaskResult(val.name, per_resolution(models, load, opts.runs(val.probe), evaluate))
    # trivial predictors depend on the labels only, which every evaluation saw alike
    matrix, per_image = confusions[-1]
    result.baselines = segmentation_baselines(matrix, val.class_names, val.background, per_image)
    return result
