"""Random access to a complete teacher-target cache (a local directory or a URL): stored crop parameters and
decoded targets per row."""
from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

from distill.cache.compression import Compression, PatchCodec, PcaBasis, storage_dtype
from distill.cache.manifest import DATA_SHARDS, PCA_BASIS, CacheManifest, read_manifest
from distill.cache.store import open_store
from distill.data.augment import CropParams
from common.errors import UserError
from common.types import ImageTokens, StoredTokens


class CacheReader:
    """Rows are addressed by (dataset index, augmentation k); a stream's index is (shard << 32) | position.
    Shards are memory-mapped lazily, per process, so a reader can be handed to DataLoader workers before any
    shard is opened."""

    def __init__(self, directory: Path | str):
        self.directory = directory
        self.store = open_store(directory)
        self.manifest: CacheManifest = read_manifest(directory)
        self.codec = cache_codec(self.store, self.manifest)
        self._complete = set(self.manifest.shards)
        self._open: dict[int, tuple[object, dict[int, int] | None]] = {}

    def __getstate__(self):
        return {**self.__dict__, "_open": {}}

    def _locate(self, index: int, k: int) -> tuple[object, int]:
        m = self.manifest
        if not 0 <= k < m.augmentations:
            raise IndexError(f"cache augmentation {k} outside 0..{m.augmentations - 1}")
        shard, image = self._image(index)
        if m.shard_name(shard) not in self._complete:
            raise UserError(f"cache {self.directory} is incomplete: shard {shard} is not written yet")
        if shard not in self._open:
            self._open[shard] = self._open_shard(shard)
        f, positions = self._open[shard]
        if positions is not None:
            if index not in positions:
                raise UserError(f"cache {self.directory} holds no targets for sample {shard}#{index & 0xFFFFFFFF} "
                                "(data shard#position): the data changed since the cache was built; rebuild it")
            image = positions[index]
        return f, image * m.augmentations + k

    def _image(self, index: int) -> tuple[int, int | None]:
        """(shard, image within it); for a stream the image is the shard's own index column's to say."""
        m = self.manifest
        if m.layout == DATA_SHARDS:
            return index >> 32, None
        if not 0 <= index < m.preprocessing.dataset_length:
            raise IndexError(f"cache row {index} outside {m.preprocessing.dataset_length} images")
        return index // m.shard_size, index % m.shard_size

    def _open_shard(self, shard: int) -> tuple[object, dict[int, int] | None]:
        name = self.manifest.shard_name(shard)
        f = safe_open(str(self.store.local(name, self.manifest.content_key())), framework="pt")
        if self.manifest.layout != DATA_SHARDS:
            return f, None
        first_rows = f.get_tensor("index")[:: self.manifest.augmentations].tolist()
        return f, {index: image for image, index in enumerate(first_rows)}

    def crop(self, index: int, k: int) -> CropParams:
        f, row = self._locate(index, k)
        return CropParams.from_tensor(f.get_slice("crop")[row])

    def stored(self, index: int, k: int) -> StoredTokens:
        """One image's targets as stored, without a batch dimension (`StoredTokens`)."""
        f, row = self._locate(index, k)
        return StoredTokens(f.get_slice("cls")[row], f.get_slice("registers")[row],
                            {key: f.get_slice(key)[row] for key in self.codec.keys})

    def targets(self, index: int, k: int) -> ImageTokens:
        """One image's float32 tokens, without a batch dimension: `cls` (D,), `registers` (R,D), `patches`
        (h,w,D), as the teacher produced them up to the storage precision."""
        return self.codec.tokens(self.stored(index, k))


def cache_codec(store, manifest: CacheManifest) -> PatchCodec:
    """How the cache in `store` stores its patch grids (its PCA basis loaded, for a `pca:N` cache)."""
    compression = Compression.parse(manifest.compression)
    codec = PatchCodec(compression, storage_dtype(manifest.dtype))
    if compression.kind == "pca":
        codec.basis = PcaBasis.from_tensors(load_file(store.local(PCA_BASIS, manifest.content_key())),
                                            manifest.pca_explained)
    return codec
