"""How close a student's teacher-space tokens are to the teacher's, on any image set.

Each non-reference model gives tokens in the reference's width: a student checkpoint through its
projection heads (`Student.teacher_space()`), anything else as it encodes. Per token type:
mean cosine (CLS1, registers, patches); on patch tokens also linear CKA over the whole set. When the
patch grids differ (patch size or resolution) the student's grid is resized bilinearly to the teacher's.
Baselines: the reference against itself on *other* images (each image against the one before it in the data,
whatever the batch size), i.e. what unrelated
tokens score.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from distill.eval.inputs import Batches, open_image_set, patch_multiple, square_crop, square_side
from distill.eval.metrics import LinearCKA
from distill.eval.report import pca_panel, save_png
from distill.eval.task import ModelLoader, TaskResult, check_positive
from common.errors import UserError
from common.types import ImageTokens


@dataclass
class FidelityOptions:
    reference: str | None = None  # the teacher's model name; None: the first model
    resolution: int | None = None  # square input side; None: the reference's native image size
    batch_size: int = 16
    limit: int | None = None
    workers: int = 0
    data_options: dict = field(default_factory=dict)  # the image set's source options (split, index, ...)

    def __post_init__(self):
        check_positive(self, "resolution", "batch_size", "limit")


def teacher_space_tokens(model, pixels: torch.Tensor) -> ImageTokens:
    patch = model.patch_size
    size = patch_multiple(pixels.shape[-1], patch)
    if size != pixels.shape[-1]:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return model.encode_image(pixels)


def _to_grid(patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    if tuple(patches.shape[1:3]) == tuple(grid):
        return patches
    resized = F.interpolate(patches.permute(0, 3, 1, 2), size=grid, mode="bilinear", align_corners=False)
    return resized.permute(0, 2, 3, 1)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1).reshape(-1)


class _Scores:
    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.cka = LinearCKA()

    def add(self, key: str, values: torch.Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(values.sum())
        self.counts[key] = self.counts.get(key, 0) + values.numel()

    def compare(self, student: ImageTokens, teacher: ImageTokens) -> None:
        self.add("cls_cosine", _cosine(student.cls, teacher.cls))
        if student.registers.shape[1] == teacher.registers.shape[1] > 0:
            self.add("register_cosine", _cosine(student.registers, teacher.registers))
        patches = _to_grid(student.patches, teacher.grid)
        self.add("patch_cosine", _cosine(patches, teacher.patches))
        self.cka.update(patches.float(), teacher.patches.float())

    def result(self) -> dict:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        out.setdefault("register_cosine", None)
        out["patch_cka"] = self.cka.value()
        return out


def _prepare(resolution: int, sample) -> torch.Tensor:
    return square_crop(sample.image, resolution)


@torch.inference_mode()
def run(models: dict, dataset: str, out_dir: Path, opts: FidelityOptions, load: ModelLoader) -> TaskResult:
    reference = opts.reference or next(iter(models))
    if reference not in models:
        raise UserError(f"reference model {reference!r} is not among the models ({', '.join(models)})")
    if len(models) < 2:
        raise UserError("fidelity compares models with a reference; expected at least two --model")
    teacher, device = load(models[reference])
    students = {name: load.student(spec) for name, spec in models.items() if name != reference}
    resolution = square_side(opts.resolution, teacher)
    images = open_image_set(dataset, opts.data_options)
    scores = {name: _Scores() for name in students}
    shuffled, previous = _Scores(), None
    first = True
    loader = Batches(images, opts.batch_size, opts.limit, opts.workers, partial(_prepare, resolution))
    for pixels in tqdm(loader, desc="fidelity", unit="batch"):
        pixels = torch.stack(pixels).to(device)
        target = teacher.encode_image(pixels)
        if previous is not None:
            shuffled.compare(ImageTokens.cat([previous, target.map(lambda t: t[:-1])]), target)
        else:
            shuffled.compare(target.map(lambda t: t[:-1]), target.map(lambda t: t[1:]))
        previous = target.map(lambda t: t[-1:])
        for name, student in students.items():
            tokens = teacher_space_tokens(student, pixels)
            if tokens.cls.shape[-1] != target.cls.shape[-1]:
                raise UserError(f"model {name} gives width {tokens.cls.shape[-1]} but the reference {reference} "
                                f"{target.cls.shape[-1]}; expected a student checkpoint with projection heads")
            scores[name].compare(tokens, target)
            if first:
                save_png(pca_panel(TF.to_pil_image(pixels[0].cpu()), tokens.patches[0]), out_dir / "pca" / f"{name}.png")
        if first:
            save_png(pca_panel(TF.to_pil_image(pixels[0].cpu()), target.patches[0]), out_dir / "pca" / f"{reference}.png")
            first = False
    for name, model in {reference: teacher, **students}.items():
        load.measure(name, model, resolution)
    result = TaskResult(str(dataset), {name: s.result() for name, s in scores.items()}, counts=loader.counts())
    result.baselines = {f"shuffled_{k}": v for k, v in shuffled.result().items()} if shuffled.counts else {}
    result.baselines["reference"] = reference
    return result
