"""Monocular depth probes on frozen features (NYUv2, the built-in scenes), two heads:

- `linear` (DINOv2's linear depth probe, arXiv 2304.07193): BatchNorm + 1x1 convolution over the last-layer
  patch tokens with the CLS token concatenated to each, classifying 256 uniform depth bins over the
  dataset's range (NYUv2 0.001-10 m); the logits are upsampled 4x (DINOv2's head upsamples by 4), softmaxed
  over the bins (DINOv2's `norm_strategy="softmax"`) and the prediction is the probability-weighted bin centre.
- `dpt`: the dense head transformers ships for TIPSv2 (`Tipsv2DptForDepthEstimation`: reassemble + fusion
  neck, decoder, its own bin regressor) on the frozen hidden states of four evenly spaced blocks of the model
  under test (blocks 3, 6, 9, 12 of a 12-block model, as `Tipsv2DptConfig`'s default backbone).

Both train with the scale-invariant log loss (SigLoss, as DINOv2's depth heads; Eigen et al. 2014, lambda 0.85)
on the train split (NYUv2: 795 labeled images or the toolbox's train list), then are scored on the val split
(NYUv2: the Eigen test split, 654 images) by sliding windows, predictions averaged, upsampled to the ground
truth, clipped to the range, Eigen crop on NYUv2: RMSE (m), AbsRel, log10, delta1..3 (%), averaged per image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm
from transformers import Tipsv2DptConfig
from transformers.models.tipsv2_dpt.modeling_tipsv2_dpt import (Tipsv2DptDecoder, Tipsv2DptFeaturesToDepth,
                                                                Tipsv2DptNeck, Tipsv2DptPreTrainedModel)

from distill.eval.dense import upsample, whole_image_patches, window_side
from distill.eval.inputs import Batches, resized_sample
from distill.eval.metrics import DepthMeter
from distill.eval.probe import (FeatureStore, Features, LinearHead, ProbeOptions, extract_training_set,
                                patch_and_cls_features, predict, seeded_init, train_head)
from distill.eval.readers import ProbeProtocol
from distill.eval.readers.depth import DepthDataset, open_depth
from distill.eval.report import depth_panel, pca_panel, save_png
from distill.eval.task import ModelLoader, TaskResult, check_positive, per_resolution, tagged
from common.errors import UserError

HEADS = ("linear", "dpt")
LINEAR_UPSAMPLE = 4
SIGLOSS_VARIANCE_FOCUS = 0.85  # lambda of Eigen et al.; DINOv2's SigLoss: var(g) + 0.15 * mean(g)^2
SIGLOSS_EPS = 1e-3  # DINOv2's: log(depth + eps)


@dataclass
class DepthOptions(ProbeOptions):
    head: str = "linear"  # linear | dpt
    dpt_width: int | None = None  # DPT fusion width; None: the dataset's (NYUv2 256, the official; scenes 32)

    def __post_init__(self):
        super().__post_init__()
        if self.head not in HEADS:
            raise UserError(f"head {self.head!r} is unknown; expected one of {', '.join(HEADS)}")
        if self.dpt_width is not None and self.head != "dpt":
            raise UserError(f"dpt-width {self.dpt_width} applies to the dpt head only; expected --head dpt")
        check_positive(self, "dpt_width")
        if self.dpt_width is not None and self.dpt_width % 8:  # the neck is 3/8, 3/4, 3/2 and 3 times as wide
            raise UserError(f"dpt-width {self.dpt_width} is invalid; expected a multiple of 8 (official: 256)")


class BinnedDepth(nn.Module):
    """DINOv2's linear depth head: a linear classifier over uniform depth bins whose logits are upsampled 4x,
    softmaxed, and turned into the probability-weighted bin centre. forward -> (B, 1, 4h, 4w) metres."""

    def __init__(self, width: int, bins: int, min_depth: float, max_depth: float):
        super().__init__()
        self.linear = LinearHead(width, bins, with_cls=True)
        self.register_buffer("bins", torch.linspace(min_depth, max_depth, bins), persistent=False)

    def forward(self, features: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        logits = F.interpolate(self.linear(features, grid), scale_factor=LINEAR_UPSAMPLE, mode="bilinear",
                               align_corners=False)
        return torch.einsum("bkhw,k->bhw", logits.softmax(1), self.bins)[:, None]


class DptDepthHead(Tipsv2DptPreTrainedModel):
    """`Tipsv2DptForDepthEstimation` without its backbone: the same modules under the same names (its
    state dict loads into one) and the same initialisation, fed the cached hidden states of the model
    under test instead of running a backbone of its own."""

    def __init__(self, config: Tipsv2DptConfig):
        super().__init__(config)
        self.neck = Tipsv2DptNeck(config)
        self.decoder = Tipsv2DptDecoder(config, out_channels=config.num_depth_bins,
                                        activation=config.depth_decoder_activation)
        self.bin_regressor = Tipsv2DptFeaturesToDepth(config)
        self.post_init()

    def forward(self, features: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        fused = self.neck(list(features), patch_height=grid[0], patch_width=grid[1])
        return self.bin_regressor(self.decoder(fused[-1]))[:, None]


def dpt_layers(num_layers: int) -> list[int]:
    """Four evenly spaced blocks ending with the last: [3, 6, 9, 12] for 12 blocks (Tipsv2DptConfig's default),
    [1, 2, 3, 4] for the micro models' 4; distinct from 4 blocks on."""
    return [math.ceil(num_layers * k / 4) for k in range(1, 5)]


def dpt_config(vision_config, width: int, data: DepthDataset) -> Tipsv2DptConfig:
    """The official head's config for this backbone; `width` 256 gives transformers' default neck
    (96, 192, 384, 768)."""
    stale = ("out_features", "out_indices", "stage_names")  # the encoder's own backbone settings
    backbone = {k: v for k, v in vision_config.to_dict().items() if k not in stale}
    backbone.update(out_indices=dpt_layers(vision_config.num_hidden_layers), apply_layernorm=True,
                    reshape_hidden_states=False)
    return Tipsv2DptConfig(backbone_config=backbone, fusion_hidden_size=width,
                           neck_hidden_sizes=[width * 3 // 8, width * 3 // 4, width * 3 // 2, width * 3],
                           num_depth_bins=data.bins, min_depth=data.min_depth, max_depth=data.max_depth)


def layer_features(layers: list[int], model, pixels: torch.Tensor) -> list[torch.Tensor]:
    return model.intermediate_layers(pixels, layers)


def sig_loss(depth: torch.Tensor, target: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """The scale-invariant log loss on the pixels with a ground truth in range, the prediction upsampled to it."""
    depth = F.interpolate(depth, size=target.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    valid = (target > min_depth) & (target < max_depth)
    if not valid.any():
        return depth.sum() * 0  # a batch without ground truth teaches nothing
    g = torch.log(depth[valid] + SIGLOSS_EPS) - torch.log(target[valid] + SIGLOSS_EPS)
    variance = g.var(correction=0) + (1 - SIGLOSS_VARIANCE_FOCUS) * g.mean() ** 2
    return variance.clamp_min(1e-12).sqrt()  # the square root's gradient is infinite at an exact fit


def depth_target(sample) -> torch.Tensor:
    return torch.from_numpy(sample.depth)


def _linear(data: DepthDataset):
    """(what to extract from the model, how to build the head from the extracted widths)."""
    return patch_and_cls_features, lambda widths: BinnedDepth(widths[0], data.bins, data.min_depth, data.max_depth)


def _dpt(model, name: str, data: DepthDataset, width: int):
    if not hasattr(model, "intermediate_layers"):
        raise UserError(f"model {name} ({type(model).__name__}) cannot return intermediate layers, which the dpt "
                        "head needs; expected a TIPSv2 model (hub id or directory, .npz, student checkpoint) "
                        "or --head linear")
    if model.num_layers < 4:
        raise UserError(f"model {name} has {model.num_layers} blocks; the dpt head reads 4 different blocks, "
                        "expected a model with at least 4 (or --head linear)")
    config = dpt_config(model.vision.config, width, data)
    return partial(layer_features, config.backbone_config.out_indices), lambda widths: DptDepthHead(config)


@dataclass
class TrainedHead:
    head: nn.Module
    features_of: Features
    train_mean: float  # mean ground-truth depth of the training windows: the constant baseline's prediction


def _mean_depth(store: FeatureStore, data: DepthDataset) -> float:
    total, count = 0.0, 0
    for target in store.targets():
        valid = target[(target > data.min_depth) & (target < data.max_depth)]
        total, count = total + float(valid.double().sum()), count + valid.numel()
    return total / count if count else float("nan")


def train_depth_head(model, name: str, device: torch.device, train: DepthDataset, protocol: ProbeProtocol,
                     opts: DepthOptions) -> TrainedHead:
    features_of, build = _linear(train) if opts.head == "linear" else _dpt(model, name, train, opts.dpt_width)
    store = FeatureStore(None if opts.feature_cache is None else opts.feature_cache / f"{name}@{protocol.size}")
    try:
        extract_training_set(model, device, train, features_of, depth_target, protocol, opts, store, name)
        head = seeded_init(opts.seed, lambda: build(store.widths))
        loss = partial(sig_loss, min_depth=train.min_depth, max_depth=train.max_depth)
        head = train_head(head, store, loss, protocol, opts.seed, device, name)
        return TrainedHead(head, features_of, _mean_depth(store, train))
    finally:
        store.close()


@torch.inference_mode()
def score(model, trained: TrainedHead, name: str, device: torch.device, val: DepthDataset, protocol: ProbeProtocol,
          opts: DepthOptions, out_dir: Path, baseline: DepthMeter | None) -> dict:
    """The depth errors on the val split; `baseline`, if given, also scores the constant train-mean predictor."""
    meter = DepthMeter(val.min_depth, val.max_depth, val.eigen_crop)
    loader = Batches(val, protocol.batch_size, opts.limit, opts.workers, partial(resized_sample, protocol.size))
    seen = 0
    for batch in tqdm(loader, desc=f"depth {name}", unit="batch"):
        depths = predict(model, trained.head, trained.features_of, [pixels for _, pixels in batch], protocol.size,
                         protocol.batch_size, device)
        for (sample, pixels), depth in zip(batch, depths):
            depth, gt = upsample(depth, sample.depth.shape)[0].cpu(), torch.from_numpy(sample.depth)
            meter.update(depth, gt)
            if baseline is not None:
                baseline.update(torch.full_like(gt, trained.train_mean), gt)
            if seen < opts.overlays:
                panel = depth_panel(sample.image, sample.depth, depth.numpy(), val.max_depth)
                save_png(panel, out_dir / "overlays" / name / f"{sample.name}.png")
            if seen == 0:
                save_png(pca_panel(TF.to_pil_image(pixels), whole_image_patches(model, pixels, device)),
                         out_dir / "pca" / f"{name}.png")
            seen += 1
    return meter.result()


def run(models: dict, dataset: str, out_dir: Path, opts: DepthOptions, load: ModelLoader) -> TaskResult:
    val, train = open_depth(dataset), open_depth(dataset, "train")
    if opts.head == "dpt":
        opts.dpt_width = opts.dpt_width or val.dpt_width
    baseline = DepthMeter(val.min_depth, val.max_depth, val.eigen_crop)
    train_means: list[float] = []

    def evaluate(model, name, device, resolution, protocol):
        trained = train_depth_head(model, tagged(name, resolution), device, train, protocol, opts)
        first = not train_means  # the constant baseline depends on the data only: scored once
        train_means.append(trained.train_mean)
        return score(model, trained, tagged(name, resolution), device, val, protocol, opts, out_dir,
                     baseline if first else None)

    result = TaskResult(val.name, per_resolution(models, load, opts.runs(val.probe), evaluate, window_side))
    constant = {f"train_mean_{k}": v for k, v in baseline.result().items()}
    result.baselines = {"train_mean_depth": train_means[0], **constant}
    return result
