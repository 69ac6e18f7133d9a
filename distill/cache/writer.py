"""Run the teacher once over a dataset and store its targets for K crops per image, shard by shard.

A shard holds its images (see `manifest` for the two layouts) each with K augmentations in order
(row = local_image * K + k). Crops are the data pipeline's own, keyed by (seed, k, image index),
so every shard is a pure function of the build settings: a build resumed after a kill, or split over
several processes, writes the same bytes a one-process uninterrupted one would.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from safetensors.torch import load_file, save_file
from torch.utils.data import IterableDataset

from distill.cache.compression import Compression, PatchCodec, PcaBasis, storage_dtype
from distill.cache.manifest import (
    DATA_SHARDS, IMAGES, MANIFEST, PCA_BASIS, TEACHERS, TOKENIZER_DIR, CacheManifest, Preprocessing, read_manifest,
    write_manifest,
)
from distill.processes import Processes
from distill.cache.store import open_store
from distill.data import DataStats
from distill.data.augment import resize_views, stack_views, to_float
from distill.data.loader import Augment
from distill.data.sample import Sample
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


def teacher_augment(pre: Preprocessing) -> Augment:
    """The online pipeline's own crop, at the teacher's size: augmentation k of an image is exactly
    the crop an online run with the same seed draws for it in epoch k."""
    size = pre.teacher_image_size
    return Augment(size, size, pre.seed, pre.crop)


def _run_teacher(teacher, samples: Iterable[tuple[int, Sample]], pre: Preprocessing, k: int, batch_size: int,
                 device, stats: DataStats, where: str) -> tuple[torch.Tensor, torch.Tensor, ImageTokens]:
    """Row indices (n,), crop rows (n, 5) and float32 teacher tokens for one shard's (index, sample) pairs,
    image-major, augmentation-minor; what the data met on the way (skipped items) goes to `stats`."""
    augment = teacher_augment(pre)
    indices, crops, pixels, outs = [], [], [], []

    def flush():
        if pixels:
            # The conversion a loader's batch gets on its way to the device (`Batch.to`) and the online teachers' own
            # resize, so the teacher sees the bits an online run feeds it.
            views = resize_views(to_float(stack_views(pixels).to(device)), pre.input_size)
            outs.append(teacher.encode_image(views).map(lambda t: t.float().cpu()))
            pixels.clear()

    for index, sample in samples:
        stats.add(sample.events, samples=1)
        for epoch in range(k):
            item = augment(sample, epoch)
            indices.append(index)
            crops.append(item["crop"])
            pixels.append(item["pixels"])
            if len(pixels) == batch_size:
                flush()
    flush()
    if not indices:  # only a stream's shard can be empty: a map-style source substitutes bad images
        raise UserError(f"{where} holds no valid sample; a wds: cache needs one in every data shard: leave it out "
                        "of the pattern")
    return torch.tensor(indices, dtype=torch.int64), torch.stack(crops), ImageTokens.cat(outs)


def _shard_samples(dataset, manifest: CacheManifest, shard: int) -> Iterator[tuple[int, Sample]]:
    """(row index, sample) pairs of a cache shard. Images layout: a bad image's row holds the next valid one,
    as the map-style sources substitute it. Data-shards layout: the stream's own valid samples."""
    if manifest.layout == DATA_SHARDS:
        return ((sample.index, sample) for sample in dataset.samples(dataset.groups([shard])))
    size = manifest.shard_size
    return ((i, dataset[i]) for i in range(shard * size, min(len(dataset), (shard + 1) * size)))


def _adopt_written(store, manifest: CacheManifest) -> CacheManifest:
    """Shards are written whole (atomically, or in one upload), so every one there is complete, listed or not."""
    manifest.record(store.names() & {manifest.shard_name(s) for s in manifest.missing()})
    return manifest


def _start_or_resume(store, fresh: CacheManifest) -> CacheManifest:
    out = store.location
    names = store.names()
    if TEACHERS in names:
        raise UserError(f"--out {out} holds the cache of several teachers ({TEACHERS}); a one-teacher build needs a "
                        "directory of its own")
    if MANIFEST not in names:
        found = sorted(names - {LOCK_NAME})
        if found:
            raise UserError(f"--out {out} is a non-empty directory without a cache ({MANIFEST}; it holds "
                            f"{found[0]}); choose a new or empty directory")
        write_manifest(out, fresh)
        return fresh
    existing = read_manifest(out)
    if existing.build_settings() != fresh.build_settings():
        old, new = existing.build_settings(), fresh.build_settings()
        key = next(k for k in new if old.get(k) != new[k])
        raise UserError(
            f"--out {out} holds a cache built with other settings ({key}: {old.get(key)!r} there, "
            f"{new[key]!r} now); choose another directory")
    write_manifest(out, _adopt_written(store, existing))
    return existing


def _fresh_manifest(teacher, dataset, pre: Preprocessing, settings: CacheSettings, teacher_spec: str) -> CacheManifest:
    stream = isinstance(dataset, IterableDataset)
    if not stream and len(dataset) != pre.dataset_length:
        raise UserError(f"dataset {pre.dataset} has {len(dataset)} images, expected {pre.dataset_length}")
    return CacheManifest(
        teacher_fingerprint=teacher.fingerprint, teacher_spec=teacher_spec, teacher_width=teacher.width,
        num_registers=teacher.num_registers, grid=(pre.input_size // teacher.patch_size,) * 2,
        preprocessing=pre, augmentations=settings.augmentations, dtype=settings.dtype,
        compression=settings.compression, shard_size=0 if stream else settings.shard_size,
        num_shards=len(dataset.shards) if stream else -(-len(dataset) // settings.shard_size),
        layout=DATA_SHARDS if stream else IMAGES)


def build_cache(
    teacher,
    dataset,
    out: str | Path,
    pre: Preprocessing,
    settings: CacheSettings,
    device: str | torch.device = "cpu",
    on_shard: Callable[[int, int, int], None] | None = None,
    teacher_spec: str = "",
    stats: DataStats | None = None,
    processes: Processes = Processes(),
    show_progress: bool = False,
) -> CacheManifest:
    """Write (or finish) the cache in `out`, a local directory whose `common.lock.OutputLock` the main process
    holds, or a URL (no lock there: one build at a time).
    Every process of `processes` calls it and computes its share of the missing shards. `on_shard(done, total,
    images)` is called after each shard this process writes (`done` of the cache's `total` are complete;
    `images` were in that shard). `teacher_spec` names the teacher for the model cards of students trained
    from the cache. `stats` counts the images this process read and the data problems met. `show_progress`:
    a progress bar of the main process's shards, with its images/s and the time left."""
    settings.validate()
    store = open_store(out)
    fresh = _fresh_manifest(teacher, dataset, pre, settings, teacher_spec)
    manifest = processes.main_first(lambda: _start_or_resume(store, fresh))
    if processes.is_main and teacher.tokenizer is not None and TOKENIZER_DIR not in store.names():
        store.put_dir(TOKENIZER_DIR, teacher.tokenizer.save_pretrained)
    compression = Compression.parse(settings.compression)
    codec = PatchCodec(compression, storage_dtype(settings.dtype))
    stats = DataStats() if stats is None else stats

    def write(shard: int) -> None:
        indices, crops, tokens = _run_teacher(teacher, _shard_samples(dataset, manifest, shard), pre,
                                              settings.augmentations, settings.batch_size, device, stats,
                                              f"data shard {dataset.shards[shard]}" if manifest.layout == DATA_SHARDS
                                              else f"cache shard {shard}")
        if compression.kind == "pca" and codec.basis is None:
            # Fitted on shard 0 and stored before any shard is, so every shard of every process and of a
            # resumed build is encoded with the same basis.
            codec.basis = PcaBasis.fit(tokens.patches, compression.components)
            store.put(PCA_BASIS, lambda tmp: save_file(codec.basis.tensors(), tmp))
            manifest.pca_explained = codec.basis.explained
        tensors = {
            "index": indices,
            "crop": crops,
            "cls": tokens.cls.to(codec.dtype),
            "registers": tokens.registers.to(codec.dtype).contiguous(),
            **{key: t.contiguous() for key, t in codec.encode(tokens.patches).items()},
        }
        name = manifest.shard_name(shard)
        store.put(name, lambda tmp: save_file(tensors, tmp, metadata={"format": manifest.format}))
        manifest.record([name])
        if processes.is_main:
            write_manifest(store.location, manifest)
        crash_point("cache-shard", len(manifest.shards))
        if on_shard:
            on_shard(len(manifest.shards), manifest.num_shards, len(indices) // settings.augmentations)

    if compression.kind == "pca":
        if manifest.pca_explained is None:
            manifest = processes.main_first(lambda: write(0) or manifest)  # the basis, before any other shard
        codec.basis = PcaBasis.from_tensors(load_file(store.local(PCA_BASIS, manifest.content_key())),
                                            manifest.pca_explained)
    mine, read_before = processes.share(manifest.missing()), stats.samples
    with tqdm(mine, unit="shard", disable=not (show_progress and processes.is_main),
              desc=f"cache (process 1 of {processes.count})" if processes.count > 1 else "cache") as bar:
        for shard in bar:
            write(shard)
            if not bar.disable:
                bar.set_postfix_str(f"{(stats.samples - read_before) / bar.format_dict['elapsed']:.1f} img/s",
                                    refresh=False)
    processes.wait()
    return processes.main_first(lambda: _finish(store, manifest))


def _finish(store, manifest: CacheManifest) -> CacheManifest:
    """The main process's merge of every process's shards into the manifest."""
    write_manifest(store.location, _adopt_written(store, manifest))
    return manifest
