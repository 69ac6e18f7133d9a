"""`manifest.json` of a teacher-target cache: what produced the targets and which shards are complete.

The manifest is rewritten atomically by the build's main process, so it only ever lists shards that are
fully on disk; a reader refuses a cache whose shard list is short (a build still running or killed). Shards
are written atomically too, so a resumed build also counts those on disk that a killed build had not listed
yet (the other processes' shards of a distributed build), and computes only the others.

Two layouts: `images` (folder:, hf:, scenes; shard s holds images [s * shard_size, (s + 1) * shard_size))
and `data-shards` (wds:; cache shard s holds the valid samples of data shard s, in stream order, found by
their stream index (shard << 32) | position).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from distill.data.augment import CropConfig
from distill.data.build import parse_spec
from distill.data.wds import is_local
from distill.cache.store import open_store
from common.errors import UserError

FORMAT = "tipsdistill-cache/2"
IMAGES, DATA_SHARDS = "images", "data-shards"  # layouts, see above
MANIFEST = "manifest.json"
TEACHERS = "teachers.json"  # a cache of several teachers, one cache each in a sub-directory (`teacher_set`)
PCA_BASIS = "pca_basis.safetensors"
TOKENIZER_DIR = "tokenizer"  # the teacher's tokenizer, so a cached run can train a text tower without the teacher


@dataclass(frozen=True)
class Preprocessing:
    """Everything that decides which pixels the teacher saw. A replaying run must agree on all but `seed`."""

    dataset: str
    data_options: dict  # the source's options (`build_dataset(spec, **options)`)
    dataset_length: int | None  # None for a stream (wds:), whose length is only known once read
    teacher_image_size: int | None  # the teacher view's size
    crop: CropConfig
    seed: int
    # A teacher of a set (`teachers:`): its own input size, to which the view is resized (`resize_views`) when they
    # differ; None for a one-teacher cache, whose teacher takes the view as it is.
    teacher_input_size: int | None = None

    @property
    def input_size(self) -> int:
        """The size of the pixels the teacher saw."""
        return self.teacher_input_size or self.teacher_image_size

    def mismatch(self, other: "Preprocessing") -> str | None:
        """First field (other than the crop seed, which only the cache needs) that differs; a field `other`
        leaves None (unknown to it) is the cache's to decide."""
        for f in fields(self):
            if f.name == "seed":
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if theirs is None:
                continue
            if _normalise(mine) != _normalise(theirs):
                return f"{f.name}={theirs!r} but the cache was built with {mine!r}"
        return None


def dataset_identity(spec: str) -> str:
    """The data spec as recorded: local paths (and wds: patterns) made absolute, so `./data` and `/abs/data`
    agree."""
    kind, argument = parse_spec(str(spec))
    if kind == "scenes":
        return f"scenes:{argument or 'train'}"
    if kind == "wds":
        return f"wds:{os.path.abspath(os.path.expanduser(argument)) if is_local(argument) else argument}"
    return f"{kind}:{os.path.abspath(argument) if os.path.exists(argument) else argument}"


def _normalise(value):
    if isinstance(value, CropConfig):
        value = asdict(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


@dataclass
class CacheManifest:
    teacher_fingerprint: str
    teacher_spec: str  # as the build named it, for the students' model cards
    teacher_width: int
    num_registers: int
    grid: tuple[int, int]
    preprocessing: Preprocessing
    augmentations: int
    dtype: str
    compression: str
    shard_size: int  # images per shard (layout `images`; 0 for `data-shards`); rows = images * augmentations
    num_shards: int
    shards: list[str] = field(default_factory=list)  # the complete ones, in shard order
    pca_explained: float | None = None  # variance kept by the PCA basis stored in PCA_BASIS
    layout: str = IMAGES
    format: str = FORMAT

    @property
    def patch_size(self) -> int:
        return self.preprocessing.input_size // self.grid[0]

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.num_shards

    def shard_name(self, index: int) -> str:
        return f"shard-{index:05d}.safetensors"

    def record(self, names) -> None:
        """Mark the shards `names` complete (with those already listed)."""
        self.shards = sorted(set(self.shards) | set(names))

    def missing(self) -> list[int]:
        done = set(self.shards)
        return [s for s in range(self.num_shards) if self.shard_name(s) not in done]

    def build_settings(self) -> dict:
        """The fields a resumed build must agree on (everything except progress)."""
        settings = asdict(self)
        for progress in ("shards", "pca_explained"):
            settings.pop(progress)
        return json.loads(json.dumps(settings))

    def content_key(self) -> str:
        """What decides every file's bytes (shards are pure functions of the build settings)."""
        return json.dumps(self.build_settings(), sort_keys=True)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "CacheManifest":
        data = dict(data)
        pre = data.pop("preprocessing")
        pre["crop"] = CropConfig(**pre["crop"])
        return cls(preprocessing=Preprocessing(**pre), grid=tuple(data.pop("grid")), **data)


def write_manifest(directory: str | Path, manifest: CacheManifest) -> None:
    open_store(directory).put(MANIFEST, lambda tmp: tmp.write_text(manifest.to_json()))


def read_manifest(directory: str | Path) -> CacheManifest:
    """The manifest of the cache at `directory`, a local path or a URL."""
    store = open_store(directory)
    if not store.exists(MANIFEST):
        raise UserError(f"cache {directory} has no {MANIFEST}; expected a directory written by `tipsdistill cache`")
    try:
        data = json.loads(store.read_text(MANIFEST))
        if data.get("format") != FORMAT:
            raise UserError(f"cache {directory} has format {data.get('format')!r}; expected {FORMAT!r}")
        return CacheManifest.from_dict(data)
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise UserError(f"cache {directory} has an unreadable {MANIFEST} ({exc}); rebuild it with `tipsdistill cache`")


def check_cache_matches(directory: Path, manifest: CacheManifest, pre: Preprocessing) -> None:
    """Refuse, in one line, targets that are not what the teacher computed on this run's pixels."""
    problem = manifest.preprocessing.mismatch(pre)
    if problem:
        raise UserError(f"cache {directory} has other preprocessing: this run has {problem}; rebuild it")
    if not manifest.complete:
        raise UserError(
            f"cache {directory} is incomplete ({len(manifest.shards)}/{manifest.num_shards} shards); "
            "rerun the same `tipsdistill cache` command to finish it")
