"""What every data source yields, and the per-reason counts of what was skipped or repaired."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from PIL import Image

# Caption granularities, TIPSv2 style: web alt-text, a medium and a long synthetic caption.
CAPTION_KEYS = ("short", "medium", "long")


@dataclass
class Sample:
    image: Image.Image  # always mode RGB
    captions: dict[str, str]  # keys among CAPTION_KEYS; absent = no caption of that granularity
    index: int  # stable source index: the crop RNG and the teacher-target cache are keyed by it
    # Data-quality events met while producing this sample ("skipped/truncated", "converted/CMYK", ...).
    # They travel with the sample because workers run in other processes; the collate sums them.
    events: tuple[str, ...] = ()


@dataclass
class DataStats:
    """Counts per event: `skipped/<reason>` (image dropped, replaced by the next valid one),
    `converted/<mode>` (image converted to RGB), `caption_dropped/<key>` (empty or not text) and
    `caption_repaired/<key>` (over the length limit, cut at a word boundary)."""

    samples: int = 0
    counts: Counter = field(default_factory=Counter)

    def add(self, events: tuple[str, ...] | list[str], samples: int = 0) -> None:
        self.counts.update(events)
        self.samples += samples

    def merge(self, other: DataStats) -> None:
        self.add(list(other.counts.elements()), other.samples)

    def total(self, kind: str) -> int:
        return sum(n for key, n in self.counts.items() if key.startswith(kind + "/"))

    def as_dict(self, prefix: str = "data/") -> dict[str, int]:
        """Flat scalars for a tracker (`accelerator.log`)."""
        out = {f"{prefix}samples": self.samples}
        out.update({prefix + key: n for key, n in sorted(self.counts.items())})
        return out

    def summary(self) -> str:
        """One log line, e.g. `data: 98 samples; skipped 2 (truncated 1, empty_file 1); ...`."""
        parts = [f"data: {self.samples} samples"]
        for kind, label in (("skipped", "skipped"), ("converted", "converted to RGB"),
                            ("caption_dropped", "captions dropped"), ("caption_repaired", "captions repaired")):
            detail = ", ".join(f"{key.split('/', 1)[1]} {n}" for key, n in sorted(self.counts.items())
                               if key.startswith(kind + "/"))
            if detail:
                parts.append(f"{label} {self.total(kind)} ({detail})")
        return "; ".join(parts)
