"""Weighted k-NN classification on frozen image embeddings, as DINO's `eval_knn.py` (arXiv 2104.14294):
each val image's k nearest training images by cosine similarity of the L2-normalised CLS1 token vote for
their class with weight exp(similarity / T); k = 20, T = 0.07. Top-1 / top-5 accuracy in percent.

Data: `folder:ROOT` with `ROOT/train/<class>/*` and `ROOT/val/<class>/*` (ImageNet's usual layout), the same
class folders in both. Images: short side -> resolution, centre crop (the model's native size by default).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.datasets import ImageFolder
from tqdm.auto import tqdm

from distill.eval.inputs import Batches, square_side
from distill.eval.metrics import topk_accuracy
from distill.eval.task import (ModelLoader, TaskResult, check_positive, check_positive_number, parse_resolutions,
                               per_resolution)
from distill.eval.zeroshot_cls import KS, open_class_folders, prepare_item
from common.errors import UserError


@dataclass
class KnnOptions:
    k: int = 20
    temperature: float = 0.07
    resolutions: tuple[int, ...] | None = None  # square input sides; None: the model's native image size
    batch_size: int = 32
    limit: int | None = None  # only the first N images of each split
    workers: int = 0

    def __post_init__(self):
        self.resolutions = parse_resolutions(self.resolutions)
        check_positive(self, "k", "batch_size", "limit")
        check_positive_number(self, "temperature")


def open_train_val(dataset: str) -> tuple[ImageFolder, ImageFolder]:
    kind, sep, rest = str(dataset).partition(":")
    root = Path(rest if sep and kind == "folder" else dataset).expanduser()
    train, val = (open_class_folders(f"folder:{root / split}") for split in ("train", "val"))
    if train.classes != val.classes:
        extra = sorted(set(train.classes) ^ set(val.classes))
        raise UserError(f"{root}/train and {root}/val have different class folders ({extra[0]!r} is in only one); "
                        "expected the same classes in both")
    return train, val


@torch.inference_mode()
def embed(model, name: str, split: str, folders: ImageFolder, resolution: int, opts: KnnOptions,
          device: torch.device, counts: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2-normalised CLS1 embeddings (N, D), class indices (N,)); `counts[split]`: what was scored and skipped."""
    features, targets = [], []
    loader = Batches(folders, opts.batch_size, opts.limit, opts.workers, partial(prepare_item, resolution))
    for batch in tqdm(loader, desc=f"knn {name} {split}", unit="batch"):
        cls = model.encode_image(torch.stack([pixels for pixels, _ in batch]).to(device)).cls
        features.append(F.normalize(cls.float(), dim=-1).cpu())
        targets.extend(target for _, target in batch)
    counts[split] = loader.counts()
    return torch.cat(features), torch.tensor(targets)


def knn_votes(train: torch.Tensor, train_labels: torch.Tensor, query: torch.Tensor, k: int, temperature: float,
              num_classes: int, chunk: int = 1024) -> torch.Tensor:
    """(Q, num_classes) votes: the k most similar training embeddings, each weighted exp(cos / T)."""
    k = min(k, len(train))
    votes = []
    for start in range(0, len(query), chunk):  # bounds the (chunk, N) similarity matrix
        similarity, index = (query[start : start + chunk] @ train.T).topk(k, dim=1)
        neighbours = F.one_hot(train_labels[index], num_classes).float()
        votes.append(torch.einsum("qkc,qk->qc", neighbours, (similarity / temperature).exp()))
    return torch.cat(votes)


def run(models: dict, dataset: str, out_dir: Path, opts: KnnOptions, load: ModelLoader) -> TaskResult:
    train, val = open_train_val(dataset)
    classes, counts = len(train.classes), {}

    def side(model, resolution, _):
        return square_side(resolution, model)

    def evaluate(model, name, device, resolution, _):
        size = side(model, resolution, None)
        bank, bank_labels = embed(model, name, "train", train, size, opts, device, counts)
        query, query_labels = embed(model, name, "val", val, size, opts, device, counts)
        votes = knn_votes(bank, bank_labels, query, opts.k, opts.temperature, classes)
        return {f"top{k}": v for k, v in topk_accuracy(votes, query_labels, KS).items()}

    runs = [(r, None) for r in opts.resolutions] if opts.resolutions else [(None, None)]
    result = TaskResult(f"folder:{Path(train.root).parent}", per_resolution(models, load, runs, evaluate, side),
                        counts=counts)
    result.baselines = {f"chance_top{k}": 100.0 * min(k, classes) / classes for k in KS}
    return result
