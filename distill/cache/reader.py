"""Random access to a complete teacher-target cache: stored crop parameters and decoded targets per row."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from distill.cache.compression import Compression, PatchCodec, PcaBasis, storage_dtype
from distill.cache.manifest import PCA_BASIS, CacheManifest, read_manifest
from distill.data.augment import CropParams
from common.errors import UserError


class CacheReader:
    """Rows are addressed by (dataset index, augmentation k). Shards are memory-mapped lazily, per
    process, so a reader can be handed to DataLoader workers before any shard is opened."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self.manifest: CacheManifest = read_manifest(self.directory)
        compression = Compression.parse(self.manifest.compression)
        self.codec = PatchCodec(compression, storage_dtype(self.manifest.dtype))
        if compression.kind == "pca":
            self.codec.basis = PcaBasis.from_tensors(
                load_file(self.directory / PCA_BASIS), self.manifest.pca_explained)
        self._open: dict[int, object] = {}

    def __getstate__(self):
        return {**self.__dict__, "_open": {}}

    def _locate(self, index: int, k: int) -> tuple[object, int]:
        m = self.manifest
        if not 0 <= index < m.preprocessing.dataset_length or not 0 <= k < m.augmentations:
            raise IndexError(f"cache row ({index}, {k}) outside {m.preprocessing.dataset_length} x {m.augmentations}")
        shard = index // m.shard_size
        if shard >= len(m.shards):
            raise UserError(f"cache {self.directory} is incomplete: shard {shard} is not written yet")
        if shard not in self._open:
            self._open[shard] = safe_open(str(self.directory / m.shards[shard]), framework="pt")
        return self._open[shard], (index - shard * m.shard_size) * m.augmentations + k

    def crop(self, index: int, k: int) -> CropParams:
        f, row = self._locate(index, k)
        return CropParams.from_tensor(f.get_slice("crop")[row])

    def targets(self, index: int, k: int) -> dict[str, torch.Tensor]:
        """Float32 `cls` (D,), `registers` (R,D), `patches` (h,w,D) as the teacher produced them,
        up to the storage precision."""
        f, row = self._locate(index, k)
        encoded = {key: f.get_slice(key)[row : row + 1] for key in self.codec.keys}
        return {
            "cls": f.get_slice("cls")[row].float(),
            "registers": f.get_slice("registers")[row].float(),
            "patches": self.codec.decode(encoded)[0],
        }
