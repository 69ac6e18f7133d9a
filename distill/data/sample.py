"""What every data source yields, and the per-reason counts of what was skipped or repaired."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from distill.config import CAPTION_KEYS  # noqa: F401 - the caption granularities, re-exported


# An event met while producing a sample, and the item it is about (a file, a row, a shard record).
Event = tuple[str, str]
EXAMPLES = 3  # item names the log gives per event
# "Repaired" alone does not say what happened to a caption; the log line says it once (`clean_captions`).
REPAIRED = "; longer than max_caption_chars, cut at a word boundary"


@dataclass
class Sample:
    # RGB: a PIL image, or the (H, W, 3) uint8 array a plain JPEG decodes to (`decode_image`), which the training
    # pipeline reads without a PIL image in between.
    decoded: Image.Image | np.ndarray
    captions: dict[str, str]  # keys among CAPTION_KEYS; absent = no caption of that granularity
    index: int  # stable source index: the crop RNG and the teacher-target cache are keyed by it
    # Data-quality events met while producing this sample (("skipped/truncated", "a/cat.jpg"), ...).
    # They travel with the sample because workers run in other processes; the collate gathers them.
    events: tuple[Event, ...] = ()

    @property
    def image(self) -> Image.Image:
        """The RGB PIL image (made from a decoded JPEG's array each time it is asked for)."""
        return self.decoded if isinstance(self.decoded, Image.Image) else Image.fromarray(self.decoded)


@dataclass
class DataStats:
    """Items per event: `skipped/<reason>` (image dropped, replaced by the next valid one),
    `converted/<mode>` (image converted to RGB), `caption_dropped/<key>` (empty or not text) and
    `caption_repaired/<key>` (over the length limit, cut at a word boundary). An item met again in a
    later epoch counts once, so the counts are of files (rows, records), not of draws; `samples` counts draws."""

    samples: int = 0
    # (event, item) pairs in the order first met: a dict is an ordered set that pickles across processes.
    items: dict[Event, None] = field(default_factory=dict)

    def add(self, events: tuple[Event, ...] | list[Event], samples: int = 0) -> None:
        self.items.update(dict.fromkeys(events))
        self.samples += samples

    def merge(self, other: DataStats) -> None:
        self.add(list(other.items), other.samples)

    @property
    def counts(self) -> Counter:
        return Counter(event for event, _ in self.items)

    def examples(self, event: str) -> list[str]:
        """The first few items met with `event`."""
        return [item for seen, item in self.items if seen == event][:EXAMPLES]

    def total(self, kind: str) -> int:
        return sum(n for key, n in self.counts.items() if key.startswith(kind + "/"))

    def as_dict(self, prefix: str = "data/") -> dict[str, int]:
        """Flat scalars for a tracker (`accelerator.log`)."""
        out = {f"{prefix}samples": self.samples}
        out.update({prefix + key: n for key, n in sorted(self.counts.items())})
        return out

    def summary(self) -> str:
        """One log line, e.g. `data: 98 samples drawn; skipped 2 (truncated 1: a.jpg; empty_file 1: b.png)`."""
        parts = [f"data: {self.samples} samples drawn"]
        counts = self.counts
        for kind, label in (("skipped", "skipped"), ("converted", "converted to RGB"),
                            ("caption_dropped", "captions dropped"), ("caption_repaired", "captions repaired")):
            detail = "; ".join(f"{key.split('/', 1)[1]} {n}: {', '.join(self.examples(key))}{', ...' * (n > EXAMPLES)}"
                               for key, n in sorted(counts.items()) if key.startswith(kind + "/"))
            if detail:
                parts.append(f"{label} {self.total(kind)} ({detail}{REPAIRED if kind == 'caption_repaired' else ''})")
        return "; ".join(parts)
