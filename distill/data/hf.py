"""Hugging Face `datasets`: a `save_to_disk` directory, any local directory `load_dataset` understands
(imagefolder with `metadata.jsonl`, parquet, ...), or a hub id when online.

Images are read undecoded (`Image(decode=False)`) and decoded by `distill.data.clean`, so a corrupt
image is skipped and counted like everywhere else instead of raising inside `datasets`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from common.errors import UserError

from distill.data.clean import DEFAULT_MAX_CAPTION_CHARS
from distill.data.source import MapSource, RawRecord, has_text, pick_columns

log = logging.getLogger(__name__)


class HFSource(MapSource):
    def __init__(self, path_or_id: str, *, split: str = "train", name: str | None = None,
                 image_column: str | None = None, caption_columns: dict[str, str] | None = None,
                 builder: str | None = None, cache_dir: str | None = None,
                 max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS, max_image_pixels: int | None = None,
                 allow_outside_root: bool = False):
        super().__init__(max_caption_chars, max_image_pixels, allow_outside_root)
        import datasets

        self.name = f"hf {path_or_id}"
        dataset = load(path_or_id, split, name, builder, cache_dir)
        features = dataset.features
        self.image_column = image_column or next(
            (col for col, feature in features.items() if isinstance(feature, datasets.Image)), "image")
        if self.image_column not in features:
            raise UserError(f"{self.name} has no image column {self.image_column!r} "
                            f"(columns: {', '.join(features)}); set image_column")
        if isinstance(features[self.image_column], datasets.Image):
            dataset = dataset.cast_column(self.image_column, datasets.Image(decode=False))
        self.columns = pick_columns(self.name, list(features), caption_columns)
        self.caption_keys = tuple(self.columns)
        local = Path(path_or_id).expanduser()
        self.root = local if local.is_dir() else None
        self._dataset = dataset.select_columns([self.image_column, *self.columns.values()])

    def __len__(self) -> int:
        return len(self._dataset)

    def caption_counts(self) -> dict[str, int]:
        return {key: sum(map(has_text, self._dataset[column])) for key, column in self.columns.items()}

    def raw(self, index: int) -> RawRecord:
        row = self._dataset[index]
        value = row[self.image_column]
        if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path") or b""
        elif value is None:
            value = b""
        elif isinstance(value, str) and self.root is not None and not os.path.isabs(value):
            value = str(self.root / value)
        return RawRecord(value, {key: row[column] for key, column in self.columns.items()})


def load(path_or_id: str, split: str, name: str | None, builder: str | None, cache_dir: str | None):
    path = Path(path_or_id).expanduser()
    with quiet_datasets() if path.is_dir() else contextlib.nullcontext():
        return load_dataset(path, path_or_id, split, name, builder, cache_dir)


@contextlib.contextmanager
def quiet_datasets():
    """Silence datasets' bars and log lines ("Downloading data", "Generating train split") while it reads files
    already on disk, where they report no download; a hub dataset keeps them."""
    from datasets.utils import logging as datasets_logging

    bars, verbosity = datasets_logging.is_progress_bar_enabled(), datasets_logging.get_verbosity()
    datasets_logging.disable_progress_bar()
    datasets_logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets_logging.set_verbosity(verbosity)
        if bars:
            datasets_logging.enable_progress_bar()


def load_dataset(path: Path, path_or_id: str, split: str, name: str | None, builder: str | None,
                 cache_dir: str | None):
    import datasets

    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise UserError(f"hf {path_or_id} has no split {split!r} (splits: {', '.join(loaded)}); set split")
            log.info("hf %s: reading split %r of %s (option split=NAME to choose)", path_or_id, split, ", ".join(loaded))
            loaded = loaded[split]
        return loaded
    if path.exists() and not path.is_dir():
        raise UserError(f"hf:{path_or_id} is a file: expected a dataset directory or a hub id")
    head, sep, tail = path_or_id.rpartition(":")
    if sep and Path(head).expanduser().is_dir():  # `hf:DIR:test` reads as a hub id otherwise
        raise UserError(f"hf:{path_or_id}: a split is an option, not part of the path: hf:{head} with split={tail} "
                        f"(data.options.split in a recipe, --data-option split={tail} on the command line)")
    try:
        if builder is not None:  # e.g. "imagefolder" when the files would suggest another format
            return datasets.load_dataset(builder, name, data_dir=str(path), split=split, cache_dir=cache_dir)
        return datasets.load_dataset(str(path) if path.is_dir() else path_or_id, name, split=split,
                                     cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - offline hub, missing repo, bad split, unknown files: all user-facing
        raise UserError(f"hf {path_or_id}: cannot load split {split!r} as a local dataset directory or hub "
                        f"dataset ({type(exc).__name__}: {one_line(exc)})") from None


def one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
