"""WebDataset tar shards, read as a stream with the standard library's `tarfile`.

Shards are local paths, URLs of any fsspec file system (`https://`, `s3://`, `gs://`, `hf://`, `memory://`;
s3 and gs need s3fs / gcsfs, https aiohttp) or webdataset's `pipe:COMMAND` (the shard is the command's
standard output). Opening a remote shard is retried (`distill.data.remote`); a shard that does not exist
or cannot be opened is a one-line error, a read that fails part-way loses the rest of that shard (reported
as `skipped/corrupt_shard`), like a truncated local file.

A sample is the group of consecutive tar members sharing a key (the member path up to the first dot
of its file name): `0001.jpg` + `0001.txt` (short caption) + optional `0001.medium.txt`,
`0001.long.txt` or `0001.json` (caption fields). Shards are split over every (process, data-loader
worker) pair; with fewer shards than pairs every pair reads all shards and keeps every n-th sample.
The sample index is `(shard_number << 32) | position_in_shard`, stable across epochs and machines.
"""
from __future__ import annotations

import glob
import json
import os
import posixpath
import re
import subprocess
import tarfile
import zlib
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from common.errors import UserError

from distill.data.augment import keyed_generator
from distill.data.clean import DEFAULT_MAX_CAPTION_CHARS, BadSample, check_max_image_pixels
from distill.data.remote import retried
from distill.data.sample import CAPTION_KEYS, Event, Sample
from distill.data.source import DEFAULT_COLUMNS, RawRecord, check_caption_columns, clean_record

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff", "gif")
TEXT_KEYS = {"short": ("txt", "short.txt"), "medium": ("medium.txt",), "long": ("long.txt",)}
_BRACE = re.compile(r"\{([^{}]*)\}")
PIPE = "pipe:"


def is_local(path: str) -> bool:
    """A path on this machine (not a URL nor a `pipe:` command)."""
    return "://" not in path and not path.startswith(PIPE)


def expand_braces(pattern: str) -> list[str]:
    """`shard-{000..009}.tar` and `{train,val}.tar` (nested groups too), then shell globs."""
    match = _BRACE.search(pattern)
    if match is None:
        # Globs are local only: `?` and `*` are ordinary characters of URLs and shell commands.
        return sorted(glob.glob(pattern)) if is_local(pattern) and glob.has_magic(pattern) else [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end():]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.groups()
        width = len(first) if first.startswith("0") or len(first) == len(last) else 0
        step = 1 if int(last) >= int(first) else -1
        options = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    else:
        options = body.split(",")
    return [path for option in options for path in expand_braces(head + option + tail)]


def worker_slot() -> tuple[int, int]:
    """(slot, slots) of this data-loader worker among all workers of all processes."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers


def read_shard(path: str) -> Iterator[tuple[int, dict[str, bytes] | None]]:
    """(position, {extension: bytes}) per key group; a corrupt shard ends with (position, None)."""
    position, key, group = 0, None, {}
    try:
        with open_shard(path) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                directory, base = posixpath.split(member.name)
                if not member.isfile() or base.startswith("."):
                    continue
                stem, _, extension = base.partition(".")
                member_key = posixpath.join(directory, stem)
                data = tar.extractfile(member).read()
                if member_key != key:
                    if key is not None:
                        yield position, group
                        position += 1
                    key, group = member_key, {}
                group[extension.lower()] = data
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        # The group being read may be incomplete: drop it and report the rest of the shard as lost.
        yield position, None
        return
    if key is not None:
        yield position, group


@contextmanager
def open_shard(path: str) -> Iterator[BinaryIO]:
    """The shard's bytes as a stream: a local file, an fsspec URL or a `pipe:` command's output."""
    if path.startswith(PIPE):
        with _piped(path[len(PIPE):]) as stream:
            yield stream
    elif is_local(path):
        with open(path, "rb") as stream:
            yield stream
    else:
        with _open_url(path) as stream:
            yield stream


def _open_url(path: str) -> BinaryIO:
    import fsspec

    # http(s) shards are streamed (block_size 0): no range requests, which many servers do not serve.
    options = {"block_size": 0} if path.startswith(("http://", "https://")) else {}
    return retried(lambda: fsspec.open(path, "rb", **options).open(), f"webdataset shard {path}", "opened",
                   ": expected tar files, e.g. wds:https://host/shard-{000..009}.tar")


@contextmanager
def _piped(command: str) -> Iterator[BinaryIO]:
    process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        yield process.stdout
    finally:
        process.stdout.close()
        # Still running once the tar's end is read (padding left) or the reader stopped early: not a failure.
        running = process.poll() is None
        if running:
            process.kill()
        process.wait()
    if not running and process.returncode != 0:
        raise OSError(f"{PIPE}{command} exited with status {process.returncode}")


def group_record(group: dict[str, bytes], columns: dict[str, tuple[str, ...]]) -> RawRecord:
    image = next((group[k] for k in IMAGE_KEYS if k in group), None)
    if image is None:
        raise BadSample("no_image")
    fields = {}
    if "json" in group:
        try:
            fields = json.loads(group["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            fields = {}
        fields = fields if isinstance(fields, dict) else {}
    captions = {}
    for key in CAPTION_KEYS:
        text = next((group[k] for k in TEXT_KEYS[key] if k in group), None)
        if text is None:
            text = next((fields[c] for c in columns[key] if fields.get(c) is not None), None)
        if text is not None:
            captions[key] = text
    return RawRecord(image, captions)


class WebDatasetSource(IterableDataset):
    def __init__(self, pattern: str, *, shuffle: bool = True, shuffle_buffer: int = 256,
                 caption_columns: dict[str, str] | None = None, max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS,
                 max_image_pixels: int | None = None):
        self.name = f"wds {pattern}"
        self.shards = expand_braces(os.path.expanduser(pattern) if is_local(pattern) else pattern)
        # Remote shards are checked as they are opened: a request per shard up front would not scale.
        missing = [s for s in self.shards if is_local(s) and not os.path.isfile(s)]
        if not self.shards or missing:
            raise UserError(f"webdataset shard {missing[0] if missing else pattern} does not exist: "
                            "expected tar files, e.g. wds:data/shard-{000..009}.tar")
        if shuffle_buffer < 0 or max_caption_chars < 1:
            raise UserError(f"{self.name}: shuffle_buffer must be >= 0 and max_caption_chars >= 1")
        check_max_image_pixels(max_image_pixels)
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        requested = check_caption_columns(caption_columns)
        self.columns = {key: (requested[key],) if requested.get(key) else DEFAULT_COLUMNS[key] for key in CAPTION_KEYS}
        self.max_caption_chars = max_caption_chars
        self.max_image_pixels = max_image_pixels
        self.caption_keys: tuple[str, ...] = CAPTION_KEYS
        self.seed, self.epoch = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Sample]:
        return self.stream(self.seed, self.epoch)

    def stream(self, seed: int, epoch: int) -> Iterator[Sample]:
        """This worker's share of epoch `epoch`, deterministic in (seed, epoch, slot, slots)."""
        slot, slots = worker_slot()
        order = list(range(len(self.shards)))
        if self.shuffle:
            order = torch.randperm(len(order), generator=keyed_generator("shard_order", seed, epoch)).tolist()
        if len(order) >= slots:
            groups = self.groups(order[slot::slots])
        else:
            groups = (g for n, g in enumerate(self.groups(order)) if n % slots == slot)
        if self.shuffle and self.shuffle_buffer > 1:
            groups = shuffled(groups, self.shuffle_buffer, keyed_generator("shuffle_buffer", seed, epoch, slot))
        return self.samples(groups)

    def groups(self, shard_order: list[int]) -> Iterator[tuple[int, dict[str, bytes] | None]]:
        for shard in shard_order:
            for position, group in read_shard(self.shards[shard]):
                yield (shard << 32) | position, group

    def clean(self, index: int, group: dict[str, bytes] | None) -> Sample:
        if group is None:
            raise BadSample("corrupt_shard")
        return clean_record(group_record(group, self.columns), index, self.item_name(index), self.max_caption_chars,
                            self.max_image_pixels)

    def item_name(self, index: int) -> str:
        """`shard.tar#position` of the record `index` (shard << 32 | position)."""
        return f"{Path(self.shards[index >> 32]).name}#{index & 0xFFFFFFFF}"

    def samples(self, groups) -> Iterator[Sample]:
        pending: list[Event] = []  # skips are reported by the next valid sample
        for index, group in groups:
            try:
                sample = self.clean(index, group)
            except BadSample as exc:
                pending.append((f"skipped/{exc.reason}", self.item_name(index)))
                continue
            sample.events = tuple(pending) + sample.events
            pending = []
            yield sample

    def check(self) -> None:
        """Fail now with one clear line if no shard holds a usable sample; learn the caption keys
        (from the first valid sample)."""
        reasons: Counter = Counter()
        for index, group in self.groups(list(range(len(self.shards)))):
            try:
                sample = self.clean(index, group)
            except BadSample as exc:
                reasons[exc.reason] += 1
                continue
            self.caption_keys = tuple(sample.captions)
            return
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items())) or "empty shards"
        raise UserError(f"{self.name}: no valid image left: all samples are unusable ({detail})")


def shuffled(items: Iterator, size: int, rng: torch.Generator) -> Iterator:
    """Streaming shuffle with a buffer of `size` items."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        pick = int(torch.randint(len(buffer), (1,), generator=rng))
        buffer[pick], item = item, buffer[pick]
        yield item
    for pick in torch.randperm(len(buffer), generator=rng).tolist():
        yield buffer[pick]
