"""What the trained probes (linear-seg, depth) share: options, the frozen-feature cache, the training loop
and dense prediction with a trained head.

The protocol is DINOv2's linear evaluation (arXiv 2304.07193; its mmsegmentation configs): a head on
frozen features, AdamW (weight decay 1e-4) with a linear warmup (1,500 of 40,000 iterations) then a
linear ("poly", power 1) decay to 0, sliding-window inference (window = crop, stride 2/3 of it: 512 / 341).
One difference, so that each model's backbone runs once: training crops are not random. Every training
image is resized to the crop size on its short side and tiled by crop x crop windows at the inference
stride; the features of those windows are extracted once per model and resolution and cached (in
memory, or memory-mapped files with `feature_cache`), and the head trains on them for `iterations`
batches drawn epoch by epoch in a seeded order.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from distill.eval.dense import slide_average, to_patch_multiple, window_boxes
from distill.eval.inputs import Batches, resize_short_side
from distill.eval.readers import ProbeProtocol
from distill.eval.task import check_positive, check_positive_number, parse_resolutions
from common.errors import UserError

# DINOv2's mmsegmentation schedule: 1,500 warmup iterations of 40,000, warmup from lr * 1e-6.
WARMUP_FRACTION = 1500 / 40000
WARMUP_RATIO = 1e-6
WEIGHT_DECAY = 1e-4

# (model, pixels (B, 3, H, W)) -> the frozen tensors a head consumes, batch first
Features = Callable[[object, torch.Tensor], list[torch.Tensor]]


@dataclass
class ProbeOptions:
    """Fields left None take the dataset's protocol (`ProbeProtocol`: ADE20K & co. 40k iterations, batch 16,
    lr 1e-3, 512 px; the built-in scenes 300 iterations at their own size)."""

    crop: int | None = None  # short side, training crop and sliding window (stride 2/3 of it)
    iterations: int | None = None
    batch_size: int | None = None  # training crops per step, and windows per forward pass
    lr: float | None = None
    seed: int = 0  # head initialisation and batch order
    resolutions: tuple[int, ...] | None = None  # several crops, one result each (`miou@448`)
    feature_cache: Path | None = None  # memory-map the cached features from files there (big sets)
    overlays: int = 4  # validation images per model drawn as PNG panels
    limit: int | None = None  # only the first N images of each split
    workers: int = 0

    def __post_init__(self):
        self.resolutions = parse_resolutions(self.resolutions)
        check_positive(self, "crop", "iterations", "batch_size", "limit")
        check_positive_number(self, "lr")
        if self.crop is not None and self.resolutions is not None:
            raise UserError(f"crop {self.crop} and resolutions {','.join(map(str, self.resolutions))} both set "
                            "the probe's input size; expected one of them")
        if self.overlays < 0:
            raise UserError(f"overlays {self.overlays} is invalid; expected 0 or more")
        if self.feature_cache is not None:
            self.feature_cache = Path(self.feature_cache)

    def runs(self, defaults: ProbeProtocol) -> list[tuple[int | None, ProbeProtocol]]:
        """(resolution for the metric keys, or None; protocol) per evaluation of a model. The options left None
        are filled in from the dataset's protocol first, so that the report shows what ran."""
        self.iterations = self.iterations or defaults.iterations
        self.batch_size = self.batch_size or defaults.batch_size
        self.lr = self.lr or defaults.lr
        if self.resolutions is None:
            self.crop = self.crop or defaults.size
            return [(None, ProbeProtocol(self.crop, self.iterations, self.batch_size, self.lr))]
        return [(size, ProbeProtocol(size, self.iterations, self.batch_size, self.lr)) for size in self.resolutions]


def window_stride(size: int) -> int:
    return max(1, size * 2 // 3)  # DINOv2: 341 for 512


class FeatureStore:
    """Frozen features of the training windows and their targets, in float16 (halves the memory; the
    head's BatchNorm rescales). With `directory`, each chunk goes to a file that is memory-mapped back,
    so a set larger than memory trains from the page cache; the files are deleted on `close`."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory
        self.chunks: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        self.offsets = [0]
        self.grid: tuple[int, int] | None = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def add(self, features: list[torch.Tensor], targets: torch.Tensor, grid: tuple[int, int]) -> None:
        self.grid = grid  # every training window has the same size, hence the same patch grid
        chunk = ([f.detach().to("cpu", torch.float16) for f in features], targets.cpu())
        if self.directory is not None:
            path = self.directory / f"chunk{len(self.chunks):06d}.pt"
            torch.save(chunk, path)
            chunk = torch.load(path, mmap=True)
        self.chunks.append(chunk)
        self.offsets.append(self.offsets[-1] + len(targets))

    def __len__(self) -> int:
        return self.offsets[-1]

    @property
    def widths(self) -> list[int]:
        """The feature width of each cached tensor (what a head's input layer is sized by)."""
        return [f.shape[-1] for f in self.chunks[0][0]]

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
        chunk_of = torch.searchsorted(torch.tensor(self.offsets), index, right=True) - 1
        rows = [(self.chunks[c], int(i) - self.offsets[c]) for c, i in zip(chunk_of.tolist(), index.tolist())]
        features = [torch.stack([chunk[0][k][row] for chunk, row in rows]).to(device).float()
                    for k in range(len(rows[0][0][0]))]
        return features, torch.stack([chunk[1][row] for chunk, row in rows]).to(device)

    def targets(self) -> Iterator[torch.Tensor]:
        return (targets for _, targets in self.chunks)

    def close(self) -> None:
        self.chunks.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def _training_windows(size: int, target_of: Callable, sample) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Short side -> size (image bicubic, target nearest), tiled by size x size windows."""
    image = resize_short_side(sample.image, size)
    target = target_of(sample)
    resized = F.interpolate(target[None, None].float(), size=(image.height, image.width), mode="nearest-exact")
    target = resized[0, 0].to(target.dtype)
    pixels = TF.to_tensor(image)
    return [(pixels[:, y0:y1, x0:x1], target[y0:y1, x0:x1])
            for y0, x0, y1, x1 in window_boxes(image.height, image.width, size, window_stride(size))]


def extract_training_set(model, device: torch.device, dataset, features_of: Features, target_of: Callable,
                         protocol: ProbeProtocol, opts: ProbeOptions, store: FeatureStore, desc: str) -> FeatureStore:
    """Every training window's frozen features and target, into `store`.

    target_of: sample -> (H, W) tensor at the image's size (labels uint8, depth float32); it runs in the
    data workers, so it must be picklable when `workers` > 0.
    """
    prepare = partial(_training_windows, protocol.size, target_of)
    for samples in tqdm(Batches(dataset, protocol.batch_size, opts.limit, opts.workers, prepare),
                        desc=f"{desc} features", unit="batch"):
        windows = [w for sample_windows in samples for w in sample_windows]
        for start in range(0, len(windows), protocol.batch_size):
            chunk = windows[start : start + protocol.batch_size]
            pixels = torch.stack([to_patch_multiple(p, model.patch_size) for p, _ in chunk]).to(device)
            grid = (pixels.shape[-2] // model.patch_size, pixels.shape[-1] // model.patch_size)
            store.add(features_of(model, pixels), torch.stack([t for _, t in chunk]), grid)
    return store


def seeded_init(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a head from a seeded generator without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _batch_order(count: int, batch_size: int, iterations: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Batches of a fresh seeded permutation per epoch (a batch may span two epochs)."""
    order = torch.empty(0, dtype=torch.long)
    for _ in range(iterations):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(count, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


def _schedule(step: int, iterations: int) -> float:
    """The lr factor of mmcv's 'poly' policy (power 1, min lr 0) with its linear warmup."""
    warmup = max(1, round(iterations * WARMUP_FRACTION))
    poly = 1 - step / iterations
    if step < warmup:
        return poly * (1 - (1 - step / warmup) * (1 - WARMUP_RATIO))
    return poly


def train_head(head: nn.Module, store: FeatureStore, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               protocol: ProbeProtocol, seed: int, device: torch.device, desc: str) -> nn.Module:
    """`protocol.iterations` AdamW steps on batches of cached features; the head is returned in eval mode."""
    head.to(device).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=protocol.lr, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_schedule, iterations=protocol.iterations))
    generator = torch.Generator().manual_seed(seed)
    order = _batch_order(len(store), protocol.batch_size, protocol.iterations, generator)
    with torch.enable_grad():
        for index in tqdm(order, total=protocol.iterations, desc=f"{desc} head", unit="step"):
            features, targets = store.batch(index, device)
            loss = loss_fn(head(features, store.grid), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return head.eval()


@torch.inference_mode()
def predict(model, head: nn.Module, features_of: Features, images: list[torch.Tensor], size: int, batch_size: int,
            device: torch.device) -> list[torch.Tensor]:
    """Per image (C, H, W): the head's output on size x size windows (stride 2/3), averaged where they overlap."""
    patch = model.patch_size

    def window_maps(pixels: torch.Tensor) -> torch.Tensor:
        grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
        return head([f.float() for f in features_of(model, pixels)], grid)

    return slide_average(images, window_maps, window=size, stride=window_stride(size), batch_size=batch_size,
                         patch=patch, device=device)


class LinearHead(nn.Module):
    """DINOv2's linear head (its mmsegmentation `BNHead`): BatchNorm, then a 1x1 convolution over the patch
    features; with `with_cls` the CLS token is concatenated to every patch (DINOv2's linear depth probe).

    forward(features, grid): features [patches (B, h, w, D)] or [patches, cls (B, D)] -> (B, outputs, h, w).
    """

    def __init__(self, width: int, outputs: int, with_cls: bool = False):
        super().__init__()
        channels = 2 * width if with_cls else width
        self.with_cls = with_cls
        self.norm = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, outputs, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)  # mmseg's initialisation of a decode head's classifier
        nn.init.zeros_(self.conv.bias)

    def forward(self, features: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        x = features[0].permute(0, 3, 1, 2)
        if self.with_cls:
            x = torch.cat([x, features[1][:, :, None, None].expand(-1, -1, *x.shape[-2:])], 1)
        return self.conv(self.norm(x))


def patch_features(model, pixels: torch.Tensor) -> list[torch.Tensor]:
    return [model.encode_image(pixels).patches]


def patch_and_cls_features(model, pixels: torch.Tensor) -> list[torch.Tensor]:
    tokens = model.encode_image(pixels)
    return [tokens.patches, tokens.cls]
