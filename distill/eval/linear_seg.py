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
from tqdm.auto import tqdm

from distill.eval.dense import window_side
from distill.eval.inputs import Batches, resized_sample
from distill.eval.metrics import IGNORE_INDEX
from distill.eval.probe import (FeatureStore, LinearHead, ProbeOptions, extract_training_set, patch_features, predict,
                                seeded_init, train_head)
from distill.eval.readers import ProbeProtocol, SegDataset, open_segmentation
from distill.eval.seg_scoring import SegScorer
from distill.eval.task import ModelLoader, TaskResult, per_resolution, tagged


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
          opts: ProbeOptions, out_dir: Path) -> SegScorer:
    scorer = SegScorer(val, name, out_dir, opts.overlays)
    loader = Batches(val, protocol.batch_size, opts.limit, opts.workers, partial(resized_sample, protocol.size))
    for batch in tqdm(loader, desc=f"linear-seg {name}", unit="batch"):
        logits = predict(model, head, patch_features, [pixels for _, pixels in batch], protocol.size,
                         protocol.batch_size, device)
        for (sample, pixels), scores in zip(batch, logits):
            scorer.add(sample, pixels, scores, model, device)
    return scorer


def run(models: dict, dataset: str, out_dir: Path, opts: ProbeOptions, load: ModelLoader) -> TaskResult:
    val, train = open_segmentation(dataset), open_segmentation(dataset, "train")
    scored: list[SegScorer] = []

    def evaluate(model, name, device, resolution, protocol):
        head = train_linear_head(model, tagged(name, resolution), device, train, protocol, opts)
        scored.append(score(model, head, tagged(name, resolution), device, val, protocol, opts, out_dir))
        return scored[-1].metrics()

    result = TaskResult(val.name, per_resolution(models, load, opts.runs(val.probe), evaluate, window_side))
    result.baselines = scored[-1].baselines()  # the labels' alone, which every evaluation saw alike
    return result
