"""Where a distillation step's targets come from: the frozen teacher online, or a teacher-target cache; for
several teachers, a `TeacherSet` of them.

All give the loop a `TeacherOutput` per batch (float32 teacher tokens, as the teacher computed them; the
task standardises them) and describe the teacher the same way (width, registers, fingerprint, spec,
tokenizer). A cached run never loads the teacher: everything comes from the cache's manifest, so a g/14
teacher occupies no memory while its cache trains a student.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from distill.cache.manifest import TOKENIZER_DIR, CacheManifest, read_manifest
from distill.cache.reader import cache_codec
from distill.cache.store import open_store
from distill.data.augment import resize_views
from distill.data.batch import Batch
from distill.tasks import TeacherOutput
from teachers.tokenizer import load_tokenizer
from common.types import PRIMARY_TEACHER, ImageTokens

log = logging.getLogger(__name__)


class OnlineTargets:
    """The frozen teacher, outside `accelerator.prepare` (never wrapped, no optimizer state), under
    inference mode: its outputs carry no graph."""

    def __init__(self, teacher, spec: str, text: bool = False, name: str = PRIMARY_TEACHER,
                 image_size: int | None = None):
        """`image_size`: this teacher's own input size, when it differs from the run's teacher view."""
        self.teacher, self.spec, self.text, self.name, self.image_size = teacher, spec, text, name, image_size
        self.width, self.num_registers = teacher.width, teacher.num_registers
        self.fingerprint, self.tokenizer = teacher.fingerprint, teacher.tokenizer
        self.patch_size = teacher.patch_size

    def teachers(self) -> dict:
        return {self.name: self}

    def tokens(self, batch: Batch) -> ImageTokens:
        return self.teacher.encode_image(self.pixels(batch)).map(lambda t: t.float())

    def pixels(self, batch: Batch) -> torch.Tensor:
        """The run's teacher view, resized for a teacher that takes another input size: one crop for every
        teacher, each at its own resolution."""
        pixels = batch.teacher_pixels
        return pixels if self.image_size is None else resize_views(pixels, self.image_size)

    @torch.no_grad()
    def __call__(self, batch: Batch) -> TeacherOutput:
        text = None
        if self.text:  # the loader tokenised the captions with `teacher.text_tokenizer`
            cls1, cls2 = batch.caption_pair.tokens
            text = (self.teacher.encode_text_tokens(cls1).float(), self.teacher.encode_text_tokens(cls2).float())
        return TeacherOutput(self.tokens(batch), text)


class CachedTargets:
    """Targets stored by `tipsdistill cache`, carried by the replay loader's batches (`teacher_targets[name]`);
    for a teacher of a set, `directory` is its own cache in the set's."""

    def __init__(self, directory: str | Path, manifest: CacheManifest | None = None, name: str = PRIMARY_TEACHER):
        self.directory = directory  # a local path or a URL
        self.manifest = manifest or read_manifest(directory)
        m = self.manifest
        self.spec, self.width, self.num_registers, self.fingerprint = (m.teacher_spec, m.teacher_width,
                                                                         m.num_registers, m.teacher_fingerprint)
        self.patch_size = m.patch_size
        store = open_store(directory)
        self.tokenizer = (load_tokenizer(store.local(TOKENIZER_DIR, m.content_key()))
                          if store.exists(TOKENIZER_DIR) else None)
        self.teacher, self.text = None, False  # the cache stands in for the teacher: none is loaded
        self.codec = cache_codec(store, m)
        self.name = name

    def teachers(self) -> dict:
        return {self.name: self}

    def tokens(self, batch: Batch) -> ImageTokens:
        """The batch's targets of this teacher, decoded on the batch's device."""
        return self.codec.tokens(batch.teacher_targets[self.name])

    def __call__(self, batch: Batch) -> TeacherOutput:
        return TeacherOutput(self.tokens(batch))


class TeacherSet:
    """Several teachers' targets for one batch (AM-RADIO): each runs once on the batch, under inference mode and in
    its own precision; the first is the primary, which describes the run's teacher (width, tokenizer, text tower
    for the caption term) as a single source would."""

    def __init__(self, sources: list):
        self.primary, *others = sources
        self.others = {source.name: source for source in others}
        p = self.primary
        self.spec, self.width, self.num_registers, self.fingerprint = p.spec, p.width, p.num_registers, p.fingerprint
        self.tokenizer, self.patch_size, self.teacher, self.text = p.tokenizer, p.patch_size, p.teacher, p.text

    def teachers(self) -> dict:
        return {self.primary.name: self.primary, **self.others}

    def describe(self) -> list[dict]:
        """What the students record of their teachers (`student@NAME` reads it)."""
        return [{"name": name, "spec": s.spec, "fingerprint": s.fingerprint} for name, s in self.teachers().items()]

    @torch.no_grad()
    def __call__(self, batch: Batch) -> TeacherOutput:
        output = self.primary(batch)
        output.others = {name: source.tokens(batch) for name, source in self.others.items()}
        return output
