"""Shared behaviour of the data sources: raw records in, clean `Sample`s out, bad items replaced."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from torch.utils.data import Dataset

from common.errors import UserError

from distill.data.clean import (DEFAULT_MAX_CAPTION_CHARS, BadSample, check_max_image_pixels, clean_captions,
                                decode_image)
from distill.data.sample import CAPTION_KEYS, Sample


def has_text(value: Any) -> bool:
    """A raw caption value that is there at all (cleaning may still drop it)."""
    return value is not None and not (isinstance(value, str) and not value.strip())


@dataclass
class RawRecord:
    image: bytes | str | os.PathLike  # encoded bytes or a file path
    captions: dict[str, Any]  # CAPTION_KEYS -> raw value (anything; cleaned later)


def clean_record(raw: RawRecord, index: int, name: str, max_caption_chars: int, max_image_pixels: int | None
                 ) -> Sample:
    """Raises BadSample when the image is unusable; `name` is the item the sample's events are about."""
    image, image_events = decode_image(raw.image, max_image_pixels)
    captions, caption_events = clean_captions(raw.captions, max_caption_chars)
    return Sample(image, captions, index, tuple((event, name) for event in image_events + caption_events))


# Column names tried, in order, when a granularity's column is not given (HF imagefolder uses `text`).
DEFAULT_COLUMNS = {"short": ("short", "text", "caption"), "medium": ("medium",), "long": ("long",)}


def check_caption_columns(caption_columns: dict[str, str] | None) -> dict[str, str]:
    requested = dict(caption_columns or {})
    unknown = sorted(set(requested) - set(CAPTION_KEYS))
    if unknown:
        raise UserError(f"caption_columns key {unknown[0]!r} is unknown: expected keys among {', '.join(CAPTION_KEYS)}")
    return requested


def pick_columns(name: str, available: list[str], caption_columns: dict[str, str] | None) -> dict[str, str]:
    """{granularity: column}: a requested column must exist; otherwise DEFAULT_COLUMNS are tried."""
    requested = check_caption_columns(caption_columns)
    chosen = {}
    for key in CAPTION_KEYS:
        if requested.get(key) is not None:
            if requested[key] not in available:
                raise UserError(f"{name} has no column {requested[key]!r} for {key} captions "
                                f"(columns: {', '.join(available)})")
            chosen[key] = requested[key]
        else:
            found = next((c for c in DEFAULT_COLUMNS[key] if c in available), None)
            if found:
                chosen[key] = found
    return chosen


class MapSource(Dataset):
    """A map-style source. Subclasses set `name`, `caption_keys` and implement `__len__` and `raw(i)`.

    `source[i]` is always a valid Sample: an unusable item i is replaced by the next valid item
    (i+1, i+2, ... wrapping), so the result depends only on i. The returned sample's `events`
    report item i's own problem, so over an epoch every bad item is counted exactly once.
    """

    name = "source"
    caption_keys: tuple[str, ...] = ()
    root: Path | None = None  # the directory relative file names are read from

    def __init__(self, max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS, max_image_pixels: int | None = None,
                 allow_outside_root: bool = False):
        if max_caption_chars < 1:
            raise UserError(f"max_caption_chars={max_caption_chars}: expected a positive number of characters")
        check_max_image_pixels(max_image_pixels)
        self.max_caption_chars = max_caption_chars
        self.max_image_pixels = max_image_pixels
        self.allow_outside_root = allow_outside_root
        self._bad: dict[int, str] = {}  # per process: known-bad items are not decoded again

    def __len__(self) -> int:
        raise NotImplementedError

    def raw(self, index: int) -> RawRecord:
        raise NotImplementedError

    def caption_counts(self) -> dict[str, int]:
        """Items with a caption of each granularity, before cleaning (no image is read)."""
        raise NotImplementedError

    def image_file(self, index: int) -> str | None:
        """The file item `index` is read from; None when the source holds encoded bytes (or no image)."""
        image = self.raw(index).image
        if isinstance(image, (str, os.PathLike)):
            return os.fspath(image) or None
        return None

    def item_name(self, index: int, image: bytes | str | os.PathLike | None = None) -> str:
        """How the logs name item `index` (whose raw image is `image`, when already read): its file,
        relative to the source's `root`, or its row when the source holds encoded bytes."""
        if image is None:
            file = self.image_file(index)
        else:
            file = (os.fspath(image) or None) if isinstance(image, (str, os.PathLike)) else None
        if file is None:
            return f"row {index}"
        return os.path.relpath(file, self.root) if self.root is not None else file

    def load(self, index: int) -> Sample:
        """Item `index` itself; raises BadSample."""
        if index in self._bad:
            raise BadSample(self._bad[index])
        try:
            raw = self.raw(index)
            self._check_inside_root(raw.image)
            return clean_record(raw, index, self.item_name(index, raw.image), self.max_caption_chars,
                                self.max_image_pixels)
        except BadSample as exc:
            self._bad[index] = exc.reason
            raise

    def _check_inside_root(self, image: bytes | str | os.PathLike) -> None:
        """A file name in an index is data, not a licence to read any file (`../../etc/passwd`, `/home/x/key.png`):
        one outside the root is skipped unless the data option `allow_outside_root` says the index may point there.
        Lexical, so that symlinks inside the root (datasets assembled from several disks) still count as inside."""
        if self.allow_outside_root or self.root is None or not isinstance(image, (str, os.PathLike)) or not image:
            return
        root = os.path.abspath(self.root)
        if os.path.commonpath([root, os.path.abspath(image)]) != root:
            raise BadSample("outside_root")

    def __getitem__(self, index: int) -> Sample:
        try:
            return self.load(index)
        except BadSample as exc:
            own = ((f"skipped/{exc.reason}", self.item_name(index)),)
        for candidate in self._after(index):
            try:
                found = self.load(candidate)
            except BadSample:
                continue
            found.events = own
            return found
        reasons = Counter(self._bad.values())
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
        raise UserError(f"{self.name}: no valid image left: all {len(self)} items are unusable ({detail})")

    def _after(self, index: int) -> Iterator[int]:
        n = len(self)
        return ((index + step) % n for step in range(1, n))

    def check(self) -> None:
        """Fail now, in the main process, with one clear line if not a single item is usable."""
        if len(self) == 0:
            raise UserError(f"{self.name}: no images found")
        self[0]
