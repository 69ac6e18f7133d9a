"""Run the teacher once over a dataset and store its targets for K crops per image, shard by shard.

Shard s holds images [s * shard_size, (s + 1) * shard_size), each with K augmentations in order
(row = local_image * K + k). Crops are the data pipeline's own, keyed by (seed, k, image index),
so every shard is a pure function of the build settings: a build resumed after a kill writes the
same bytes an uninterrupted one would.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import IterableDataset

from common.atomic import atomic_directory, write_atomic
from distill.cache.compression import Compression, PatchCodec, PcaBasis, storage_dtype
from distill.cache.manifest import (
    MANIFEST, PCA_BASIS, TOKENIZER_DIR, CacheManifest, Preprocessing, read_manifest, write_manifest,
)
from distill.data import DataStats
from distill.data.loader import Augment
from common.errors import UserError
from common.faults import crash_point
from common.lock import LOCK_NAME
from common.types import ImageTokens


@dataclass(frozen=True)
class CacheSettings:
    augmentations: int
    dtype: str = "bf16"
    compression: str = "none"
    shard_size: int = 256
    batch_size: int = 32

    def validate(self) -> None:
        if self.augmentations < 1:
            raise UserError(f"--augmentations {self.augmentations} must be at least 1")
        if self.shard_size < 1:
            raise UserError(f"--shard-size {self.shard_size} must be at least 1")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size} must be at least 1")
        storage_dtype(self.dtype)
        Compression.parse(self.compression)


def require_indexed(dataset) -> None:
    if isinstance(dataset, IterableDataset):
        raise UserError("a teacher-target cache needs a map-style dataset (folder:, hf:, scenes); "
                        "a wds: stream has no stable image index to replay")


def teacher_augment(pre: Preprocessing) -> Augment:
    """The online pipeline's own crop, at the teacher's size: augmentation k of an image is exactly
    the crop an online run with the same seed draws for it in epoch k."""
    size = pre.teacher_image_size
    return Augment(size, size, pre.seed, pre.crop)


def _run_teacher(teacher, dataset, images: range, pre: Preprocessing, k: int, batch_size: int,
                 device, stats: DataStats) -> tuple[torch.Tensor, ImageTokens]:
    """Crop rows (n, 5) and float32 teacher tokens for one shard, image-major, augmentation-minor; what the
    data met on the way (skipped items) goes to `stats`."""
    augment = teacher_augment(pre)
    crops, pixels, outs = [], [], []

    def flush():
        if pixels:
            outs.append(teacher.encode_image(torch.stack(pixels).to(device)).map(lambda t: t.float().cpu()))
            pixels.clear()

    for index in images:
        sample = dataset[index]
        stats.add(sample.events, samples=1)
        for epoch in range(k):
            item = augment(sample, epoch)
            crops.append(item["crop"])
            pixels.append(item["pixels"])
            if len(pixels) == batch_size:
                flush()
    flush()
    return torch.stack(crops), ImageTokens.cat(outs)


def _start_or_resume(out: Path, fresh: CacheManifest) -> CacheManifest:
    if not (out / MANIFEST).is_file():
        found = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) if out.is_dir() else []
        if found:
            raise UserError(f"--out {out} is a non-empty directory without a cache ({MANIFEST}; it holds "
                            f"{found[0]}); choose a new or empty directory")
        out.mkdir(parents=True, exist_ok=True)
        write_manifest(out, fresh)
        return fresh
    existing = read_manifest(out)
    if existing.build_settings() != fresh.build_settings():
        old, new = existing.build_settings(), fresh.build_settings()
        key = next(k for k in new if old.get(k) != new[k])
        raise UserError(
            f"--out {out} holds a cache built with other settings ({key}: {old.get(key)!r} there, "
            f"{new[key]!r} now); choose another directory")
    return existing


def build_cache(
    teacher,
    dataset,
    out: Path,
    pre: Preprocessing,
    settings: CacheSettings,
    device: str | torch.device = "cpu",
    on_shard: Callable[[int, int], None] | None = None,
    teacher_spec: str = "",
    stats: DataStats | None = None,
) -> CacheManifest:
    """Write (or finish) the cache in `out`, whose `common.lock.OutputLock` the caller holds.
    `on_shard(done, total)` is called after each shard. `teacher_spec` names the teacher for the model cards
    of students trained from the cache. `stats` counts the images read and the data problems met."""
    settings.validate()
    require_indexed(dataset)
    out = Path(out)
    if len(dataset) != pre.dataset_length:
        raise UserError(f"dataset {pre.dataset} has {len(dataset)} images, expected {pre.dataset_length}")
    grid = (pre.teacher_image_size // teacher.patch_size,) * 2
    num_shards = -(-len(dataset) // settings.shard_size)
    manifest = _start_or_resume(out, CacheManifest(
        teacher_fingerprint=teacher.fingerprint, teacher_spec=teacher_spec, teacher_width=teacher.width,
        num_registers=teacher.num_registers, grid=grid, preprocessing=pre,
        augmentations=settings.augmentations, dtype=settings.dtype, compression=settings.compression,
        shard_size=settings.shard_size, num_shards=num_shards))
    if teacher.tokenizer is not None and not (out / TOKENIZER_DIR).is_dir():
        with atomic_directory(out / TOKENIZER_DIR) as tmp:
            teacher.tokenizer.save_pretrained(tmp)
    compression = Compression.parse(settings.compression)
    codec = PatchCodec(compression, storage_dtype(settings.dtype))
    if compression.kind == "pca" and manifest.pca_explained is not None:
        codec.basis = PcaBasis.from_tensors(load_file(out / PCA_BASIS), manifest.pca_explained)

    k = settings.augmentations
    stats = DataStats() if stats is None else stats
    for s in range(len(manifest.shards), num_shards):
        images = range(s * settings.shard_size, min(len(dataset), (s + 1) * settings.shard_size))
        crops, tokens = _run_teacher(teacher, dataset, images, pre, k, settings.batch_size, device, stats)
        if compression.kind == "pca" and codec.basis is None:
            # Fitted on the first shard and stored before any shard is, so a resumed build encodes
            # every shard with the same basis.
            codec.basis = PcaBasis.fit(tokens.patches, compression.components)
            write_atomic(out / PCA_BASIS, lambda tmp: save_file(codec.basis.tensors(), tmp))
            manifest.pca_explained = codec.basis.explained
            write_manifest(out, manifest)
        tensors = {
            "index": torch.arange(images.start, images.stop).repeat_interleave(k),
            "crop": crops,
            "cls": tokens.cls.to(codec.dtype),
            "registers": tokens.registers.to(codec.dtype).contiguous(),
            **{key: t.contiguous() for key, t in codec.encode(tokens.patches).items()},
        }
        name = manifest.shard_name(s)
        write_atomic(out / name, lambda tmp: save_file(tensors, tmp, metadata={"format": manifest.format}))
        manifest.shards.append(name)
        write_manifest(out, manifest)
        crash_point("cache-shard", len(manifest.shards))
        if on_shard:
            on_shard(len(manifest.shards), num_shards)
    return manifest
