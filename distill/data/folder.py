"""Image folders: every image under a directory (recursive), captions optional.

Captions come either from sidecar files next to each image (`cat.jpg` + `cat.txt` = short caption,
`cat.medium.txt`, `cat.long.txt`) or from an index file (`jsonl` or `csv`) with one row per image:
an image-path column (relative to the index file) and one column per caption granularity. An index
named `metadata.jsonl` / `metadata.csv` at the folder root is used automatically (the Hugging Face
imagefolder convention) unless `auto_index=False`; with an index, the samples are its rows, in the index's
own order (a user's explicit order); a scanned folder is in sorted relative-path order.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import mimetypes
import os
from collections import Counter
from pathlib import Path

from common.errors import UserError

from distill.data.clean import DEFAULT_MAX_CAPTION_CHARS
from distill.data.sample import CAPTION_KEYS
from distill.data.source import MapSource, RawRecord, has_text, pick_columns

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"})
INDEX_NAMES = ("metadata.jsonl", "metadata.csv")
SIDECAR_SUFFIXES = {"short": ".txt", "medium": ".medium.txt", "long": ".long.txt"}


class FolderSource(MapSource):
    def __init__(self, path: str | os.PathLike, *, index: str | os.PathLike | None = None,
                 image_column: str = "file_name", caption_columns: dict[str, str] | None = None,
                 auto_index: bool = True, max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS,
                 max_image_pixels: int | None = None, allow_outside_root: bool = False):
        super().__init__(max_caption_chars, max_image_pixels, allow_outside_root)
        path = Path(path).expanduser()
        self.name = f"folder {path}"
        if not path.exists():
            raise UserError(f"data folder {path} does not exist: expected a directory of images or a jsonl/csv index")
        if path.is_file():
            index, root = path, path.parent
        else:
            root = path
            if index is not None:
                index = root / index
            elif auto_index:
                index = next((root / name for name in INDEX_NAMES if (root / name).is_file()), None)
        self.root = root
        self.index = index  # the index file read, None when the folder was scanned
        if index is not None:
            self._records = read_index(Path(index), image_column, caption_columns)
        else:
            self._records = scan_folder(root)
        self.caption_keys = tuple(key for key in CAPTION_KEYS if any(key in r.captions for r in self._records))

    def __len__(self) -> int:
        return len(self._records)

    def caption_counts(self) -> dict[str, int]:
        return {key: sum(has_text(r.captions.get(key)) for r in self._records) for key in self.caption_keys}

    def image_file(self, index: int) -> str | None:
        # Without reading the sidecar captions that `raw` reads.
        return os.fspath(self._records[index].image) or None

    def raw(self, index: int) -> RawRecord:
        record = self._records[index]
        return RawRecord(record.image, {key: read_text(value) if isinstance(value, Path) else value
                                        for key, value in record.captions.items()})


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def scan_folder(root: Path) -> list[RawRecord]:
    """Sorted relative POSIX paths, compared as strings (`a/z.png` before `b.png`): the same order on every
    machine, and the order `sorted()` gives an index of the same files, so a folder and such an index give the
    same items at the same indices (and the same student).
    Sidecar captions are kept as paths and read when the item is loaded."""
    records, visited, undecoded = [], set(), []
    # Symlinked sub-folders are followed (datasets are often assembled that way), each real one once.
    for directory, subdirs, files in os.walk(root, followlinks=True):
        visited.add(os.path.realpath(directory))
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")
                            and os.path.realpath(os.path.join(directory, d)) not in visited)
        present = set(files)
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if name.startswith("."):
                continue
            if ext.lower() not in IMAGE_EXTENSIONS:
                if (mimetypes.guess_type(name)[0] or "").startswith("image/"):
                    undecoded.append(os.path.relpath(os.path.join(directory, name), root))
                continue
            captions = {key: Path(directory, stem + suffix) for key, suffix in SIDECAR_SUFFIXES.items()
                        if stem + suffix in present}
            records.append(RawRecord(os.path.join(directory, name), captions))
    warn_undecoded(root, undecoded)
    return sorted(records, key=lambda record: Path(os.path.relpath(record.image, root)).as_posix())


def warn_undecoded(root: Path, names: list[str]) -> None:
    """Image files of a type this reader does not decode (SVG, HEIC, AVIF, ...) are left out: say so once."""
    if names:
        kinds = ", ".join(f"{ext} {n}" for ext, n in sorted(Counter(os.path.splitext(name)[1].lower()
                                                                   for name in names).items()))
        log.warning("folder %s: left out %d image file(s) of a type this reader does not decode (%s; e.g. %s); "
                    "convert them to one of %s", root, len(names), kinds, ", ".join(names[:3]),
                    " ".join(sorted(ext[1:] for ext in IMAGE_EXTENSIONS)))


def read_index(index: Path, image_column: str, caption_columns: dict[str, str] | None) -> list[RawRecord]:
    if not index.is_file():
        raise UserError(f"caption index {index} does not exist: expected a .jsonl or .csv file")
    suffix = index.suffix.lower()
    if suffix == ".jsonl":
        rows, malformed = read_jsonl(index)
    elif suffix == ".csv":
        rows, malformed = read_csv(index), []
    else:
        raise UserError(f"caption index {index}: expected a .jsonl or .csv file")
    if malformed:
        log.warning("%s: skipped %d malformed line(s) (first: line %d)", index, len(malformed), malformed[0])
    header = set().union(*(row.keys() for row in rows)) if rows else set()
    if rows and image_column not in header:
        raise UserError(f"caption index {index} has no image column {image_column!r} "
                        f"(columns: {', '.join(sorted(header))}); set image_column")
    chosen = pick_columns(f"caption index {index}", sorted(header), caption_columns)
    base = index.parent
    # A row without an image path becomes "" and is skipped as missing_file when loaded.
    return [RawRecord(str(base / str(row[image_column])) if row.get(image_column) else "",
                      {key: row.get(column) for key, column in chosen.items()})
            for row in rows]


def read_utf8(index: Path) -> str:
    """The index's text. A byte that is not UTF-8 means the file is in another encoding (Latin-1, cp1252):
    refused, since decoding it anyway would corrupt every path and caption holding such a byte."""
    data = index.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"caption index {index} is not UTF-8 (byte 0x{data[exc.start]:02x} on line {line}); "
                        "expected UTF-8 text: convert it, e.g. with iconv -t UTF-8") from None


def read_csv(index: Path) -> list[dict]:
    reader = csv.DictReader(io.StringIO(read_utf8(index), newline=""))
    rows = []
    for row in reader:
        if None in row:  # DictReader files the fields beyond the header's under the key None
            raise UserError(f"caption index {index} line {reader.line_num} has {len(row) - 1 + len(row[None])} "
                            f"fields, the header {len(reader.fieldnames)}: quote fields that hold a comma")
        rows.append(row)
    return rows


def read_jsonl(index: Path) -> tuple[list[dict], list[int]]:
    rows, malformed = [], []
    # Split on newlines only: JSON strings may hold U+2028, which str.splitlines would cut at.
    for number, line in enumerate(read_utf8(index).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            malformed.append(number)
    return rows, malformed
