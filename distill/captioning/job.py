"""Caption the images of a data source into a jsonl file that `folder:` and `hf:` read back.

Images are listed in source order (every n-th for a shard) and cut into fixed batches, so a resumed run
captions what is left in the same batches as an uninterrupted run; images whose `file_name` is already in
the output are skipped. Captions the source already has (sidecars, index columns) are kept.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from common.errors import UserError, writing

from distill.captioning.captioner import Captioner
from distill.captioning.output import append_rows
from distill.data import build_dataset
from distill.data.clean import BadSample
from distill.data.folder import FolderSource
from distill.data.hf import HFSource
from distill.data.sample import CAPTION_KEYS, Sample
from distill.data.source import MapSource


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, sep, count = text.partition("/")
        if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
            raise UserError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
        return cls(int(index), int(count))


@dataclass(frozen=True)
class CaptionSettings:
    batch_size: int = 16
    overwrite: bool = False  # generate requested granularities the data already has
    num_workers: int = 0  # image-decoding processes
    shard: Shard = Shard()

    def validate(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: expected a positive number of images")
        if self.num_workers < 0:
            raise UserError(f"--num-workers {self.num_workers}: expected 0 (decode in this process) or more")


@dataclass
class Plan:
    batches: list[list[tuple[int, str]]]  # (source index, file_name) of the images to caption
    written: int = 0  # images already in the output
    without_file: int = 0


@dataclass
class Summary:
    captioned: int = 0
    skipped: Counter = field(default_factory=Counter)  # unreadable images by reason, tried again by a rerun


def open_images(spec: str, options: dict, out: Path) -> MapSource:
    dataset = build_dataset(spec, **options)
    if not isinstance(dataset, MapSource):
        raise UserError(f"caption reads image files from folder: or hf: data, not {spec!r}")
    if isinstance(dataset, FolderSource) and _same_file(dataset.index, out):
        # `folder:DIR --out DIR/metadata.jsonl`: the images are the folder's, not the lines written so far.
        dataset = build_dataset(spec, **{**options, "auto_index": False})
        if _same_file(dataset.index, out):
            raise UserError(f"--out {out} is the caption index that {spec} reads: write the captions to another file")
    if isinstance(dataset, HFSource) and dataset.root is not None and out.name == "metadata.jsonl" \
            and Path(os.path.abspath(out)).is_relative_to(os.path.abspath(dataset.root)):
        raise UserError(f"hf:{dataset.root} would read --out {out} as its own metadata: caption "
                        f"folder:{dataset.root} instead (the same images)")
    return dataset


def _same_file(a: Path | None, b: Path) -> bool:
    return a is not None and os.path.abspath(a) == os.path.abspath(b)


def plan(dataset: MapSource, out: Path, written: dict[str, frozenset[str]], keys: tuple[str, ...],
         settings: CaptionSettings) -> Plan:
    """What is left to caption: every image of the shard whose file_name is not `written` in `out` yet."""
    result, seen = Plan([]), set()
    indices = range(settings.shard.index, len(dataset), settings.shard.count)
    size = settings.batch_size
    for start in range(0, len(indices), size):
        batch = []
        for index in indices[start:start + size]:
            name = file_name(dataset.image_file(index), out.parent)
            if name is None:
                result.without_file += 1
                continue
            if name in seen:  # an index that lists an image twice
                continue
            seen.add(name)
            if name in written:
                _check_written(out, name, written[name], keys)
                result.written += 1
            else:
                batch.append((index, name))
        if batch:
            result.batches.append(batch)
    if result.without_file and not seen:
        raise UserError(f"{dataset.name} holds encoded images, not image files: caption names each image by its "
                        f"path (file_name), so it reads folder:DIR or hf:DIR of image files")
    return result


def file_name(image_file: str | None, out_dir: Path) -> str | None:
    """The image's path relative to the output's directory (Hugging Face imagefolder's `file_name`)."""
    if image_file is None:
        return None
    return Path(os.path.relpath(os.path.abspath(image_file), os.path.abspath(out_dir))).as_posix()


def _check_written(out: Path, name: str, present: frozenset[str], keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in present]
    if missing:
        raise UserError(f"{out} already has a line for {name} without a {missing[0]} caption (written with other "
                        f"--granularities?): write to another --out; the data's own captions are kept there")


class _Decode(Dataset):
    """Decoding runs in the loader's workers; an unreadable image comes back as its reason."""

    def __init__(self, source: MapSource):
        self.source = source

    def __getitem__(self, item: tuple[int, str]) -> tuple[str, Sample | str]:
        index, name = item
        try:
            return name, self.source.load(index)
        except BadSample as exc:
            return name, exc.reason


def caption_images(dataset: MapSource, work: Plan, captioner: Captioner, prompts: dict[str, str], out: Path,
                   settings: CaptionSettings) -> Summary:
    loader = DataLoader(_Decode(dataset), batch_sampler=work.batches, collate_fn=list,
                        num_workers=settings.num_workers)
    summary = Summary()
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=sum(map(len, work.batches)), unit="img", desc="caption")
    # `writing` also around the close, which reports a failed write-back of the file system (NFS, a full quota).
    with writing(out), open(out, "ab") as file, bar:
        for batch in loader:
            good = [(name, sample) for name, sample in batch if isinstance(sample, Sample)]
            summary.skipped.update(sample for _, sample in batch if isinstance(sample, str))
            rows = caption_batch(captioner, prompts, [s for _, s in good], settings.overwrite)
            append_rows(file, [{"file_name": name, **row} for (name, _), row in zip(good, rows)])
            summary.captioned += len(rows)
            bar.update(len(batch))
    return summary


def caption_batch(captioner: Captioner, prompts: dict[str, str], samples: list[Sample],
                  overwrite: bool) -> list[dict[str, str]]:
    """Per sample, its own captions plus a generated one for each prompt's granularity it lacks (or every
    prompt's, with `overwrite`), in CAPTION_KEYS order."""
    captions = [dict(sample.captions) for sample in samples]
    for key, prompt in prompts.items():
        need = [i for i, own in enumerate(captions) if overwrite or key not in own]
        if need:
            for i, text in zip(need, captioner.caption([samples[i].image for i in need], prompt)):
                captions[i][key] = text
    return [{key: own[key] for key in CAPTION_KEYS if key in own} for own in captions]
