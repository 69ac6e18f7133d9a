"""Image <-> caption retrieval: recall@1/5/10 in both directions on a captioned image set.

Images are embedded by their L2-normalised CLS1 token (TIPSv2's image embedding; `image_token=register`
uses CLS2, the token TIPSv2 aligns with synthetic captions); captions by `encode_text`. Every distinct
caption string is one text; it is a positive for every image that carries it (the built-in scenes repeat
short captions such as "a red circle").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from distill.data.sample import CAPTION_KEYS
from distill.eval.inputs import Batches, open_image_set, square_crop, square_side
from distill.eval.metrics import recall_at_k
from distill.eval.task import ModelLoader, TaskResult, check_positive, require_text
from common.errors import UserError

KS = (1, 5, 10)


@dataclass
class RetrievalOptions:
    resolution: int | None = None  # square input side; None: the model's native image size
    caption_keys: tuple[str, ...] = CAPTION_KEYS  # granularities used as texts
    image_token: str = "cls"  # cls | register
    batch_size: int = 32
    limit: int | None = None
    workers: int = 0
    data_options: dict = field(default_factory=dict)  # the image set's source options (split, index, ...)

    def __post_init__(self):
        check_positive(self, "resolution", "batch_size", "limit")
        self.caption_keys = tuple(self.caption_keys)
        bad = [k for k in self.caption_keys if k not in CAPTION_KEYS]
        if bad or not self.caption_keys:
            raise UserError(f"caption key {bad[0] if bad else ''!r} is unknown; expected some of {', '.join(CAPTION_KEYS)}")
        if self.image_token not in ("cls", "register"):
            raise UserError(f"image token {self.image_token!r} is unknown; expected cls or register")


def _captions(sample, keys: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(sample.captions[k] for k in keys if sample.captions.get(k)))


def _prepare(resolution: int, keys: tuple[str, ...], sample) -> tuple[torch.Tensor, list[str]]:
    return square_crop(sample.image, resolution), _captions(sample, keys)


@torch.inference_mode()
def evaluate_model(model, name: str, images, opts: RetrievalOptions, device: torch.device
                   ) -> tuple[dict, torch.Tensor, dict]:
    """(recalls, the image x text positive matrix, what was scored and skipped)."""
    require_text(model, name, "retrieval")
    resolution = square_side(opts.resolution, model)
    loader = Batches(images, opts.batch_size, opts.limit, opts.workers, partial(_prepare, resolution, opts.caption_keys))
    image_embeddings, captions = [], []
    for batch in tqdm(loader, desc=f"retrieval {name}", unit="batch"):
        tokens = model.encode_image(torch.stack([p for p, _ in batch]).to(device))
        pooled = tokens.cls if opts.image_token == "cls" else tokens.registers[:, 0]
        image_embeddings.append(F.normalize(pooled.float(), dim=-1).cpu())
        captions.extend(c for _, c in batch)
    texts = list(dict.fromkeys(c for caps in captions for c in caps))
    if not texts:
        raise UserError(f"the image set has no captions of kind {', '.join(opts.caption_keys)}; retrieval needs captions")
    text_index = {t: j for j, t in enumerate(texts)}
    positives = torch.zeros(len(captions), len(texts), dtype=torch.bool)
    for i, caps in enumerate(captions):
        positives[i, [text_index[c] for c in caps]] = True
    text_embeddings = torch.cat([
        F.normalize(model.encode_text(texts[i : i + opts.batch_size]).float(), dim=-1).cpu()
        for i in range(0, len(texts), opts.batch_size)
    ])
    similarity = torch.cat(image_embeddings) @ text_embeddings.T
    return _recalls(similarity, positives), positives, {**loader.counts(), "texts_scored": len(texts)}


def expected_random_recall(positives: torch.Tensor, k: int) -> float:
    """The expected recall@k of a uniformly random ranking, exactly: a query with m positives among N candidates
    misses them all with probability C(N - m, k) / C(N, k)."""
    n = positives.shape[1]
    m = positives.sum(1).double()
    m = m[m > 0]
    miss = torch.ones_like(m)
    for i in range(min(k, n)):  # C(N - m, k) / C(N, k) as a product of k ratios
        miss = miss * ((n - m - i) / (n - i)).clamp(min=0)
    return float(100.0 * (1 - miss).mean()) if len(m) else float("nan")


def expected_random_recalls(positives: torch.Tensor) -> dict:
    """The same keys as `_recalls`, for a random ranking (its expected value, not one draw)."""
    return {**{f"i2t_r{k}": expected_random_recall(positives, k) for k in KS},
            **{f"t2i_r{k}": expected_random_recall(positives.T, k) for k in KS}}


def _recalls(similarity: torch.Tensor, positives: torch.Tensor) -> dict:
    # Images without any caption cannot be scored as queries; texts always have an image.
    has_caption = positives.any(1)
    i2t = recall_at_k(similarity[has_caption], positives[has_caption], KS)
    t2i = recall_at_k(similarity.T, positives.T, KS)
    return {**{f"i2t_r{k}": v for k, v in i2t.items()}, **{f"t2i_r{k}": v for k, v in t2i.items()}}


def run(models: dict, dataset: str, out_dir: Path, opts: RetrievalOptions, load: ModelLoader) -> TaskResult:
    images = open_image_set(dataset, opts.data_options)
    result = TaskResult(str(dataset))
    for name, spec in models.items():
        model, device = load(spec)
        result.models[name], positives, result.counts = evaluate_model(model, name, images, opts, device)
        load.measure(name, model, square_side(opts.resolution, model))
        del model  # free it before the next model loads
    result.baselines = {f"random_{k}": v for k, v in expected_random_recalls(positives).items()}
    return result
