"""The contract between `evaluate` and the task modules: how models are loaded, what a task returns."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from distill.eval.cost import model_cost
from distill.eval.models import load_model, model_device
from students.checkpoint import is_student_dir, load_student
from common.errors import UserError


def check_positive(options, *names: str) -> None:
    """One-line UserError for an option that must be a positive integer (None allowed: the default)."""
    for name in names:
        value = getattr(options, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{name.replace('_', '-')} {value!r} is invalid; expected a positive integer")


def check_positive_number(options, *names: str) -> None:
    """One-line UserError for an option that must be a positive number (None allowed: the default)."""
    for name in names:
        value = getattr(options, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise UserError(f"{name.replace('_', '-')} {value!r} is invalid; expected a positive number")


def require_text(model, name: str, task: str) -> None:
    """One-line UserError when `model` has no text tower to meet the images, saying why where the model knows
    (`why_no_text`: a student read in a text-less teacher's space)."""
    if not getattr(model, "has_text", True):
        why = getattr(model, "why_no_text", None)
        raise UserError(f"model {name} has no text tower{f' ({why})' if why else ''}; {task} needs one")


def _size(item) -> int | None:
    if isinstance(item, str) and item.strip().isdigit():
        return int(item)
    return item if isinstance(item, int) and not isinstance(item, bool) else None


def parse_resolutions(value) -> tuple[int, ...] | None:
    """`--resolutions 224,336,448` (or a sequence of ints) -> (224, 336, 448); None stays None (the protocol's)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    sizes = [_size(item) for item in items]
    text = value if isinstance(value, str) else ",".join(map(str, items))
    if not sizes or any(size is None or size < 1 for size in sizes):
        raise UserError(f"resolutions {text!r} is invalid; expected a comma-separated list of positive integers, "
                        "e.g. 224,336,448")
    if len(set(sizes)) != len(sizes):
        raise UserError(f"resolutions {text!r} lists a resolution twice; expected distinct sizes")
    return tuple(sizes)


def at_resolution(metrics: dict, resolution: int | None) -> dict:
    """Metric keys suffixed `@RES` (`miou@448`) when several resolutions share one report column."""
    return metrics if resolution is None else {f"{key}@{resolution}": value for key, value in metrics.items()}


def tagged(name: str, resolution: int | None) -> str:
    """A model's name for its PNG folders: `NAME@RES` when several resolutions are evaluated."""
    return name if resolution is None else f"{name}@{resolution}"


def per_resolution(models: dict, load: "ModelLoader", runs: list, evaluate, side) -> dict[str, dict]:
    """{name: metrics}: each model loaded in turn (and freed before the next, so a giant teacher and its
    students need not fit in memory together), then `evaluate(model, name, device, resolution, setting)`
    for each (resolution, setting) of `runs`, the metric keys suffixed `@RES` when resolution is not None.
    `side(model, resolution, setting)` is the side of the square inputs the model saw; its cost is measured
    once, at the largest, after the evaluations (which some tests watch from their first call)."""
    scores: dict[str, dict] = {}
    for name, spec in models.items():
        model, device = load(spec)
        scores[name] = {}
        for resolution, setting in runs:
            scores[name].update(at_resolution(evaluate(model, name, device, resolution, setting), resolution))
        load.measure(name, model, max(side(model, resolution, setting) for resolution, setting in runs))
        del model
    return scores


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"device {device!r} is not understood; expected cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for but no CUDA GPU is available; expected cpu")
    return resolved


@dataclass
class ModelLoader:
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    # spec -> fingerprint of what it loaded, so the report says which weights produced each column
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    # name -> `model_cost` of each model, measured while it is loaded; None: not measured (`cost=False`)
    costs: dict[str, dict] | None = None

    def __call__(self, spec):
        """(model, the device its inputs go to); specs are loaded only when their turn comes."""
        model = self._remember(spec, load_model(spec, device=self.device, dtype=self.dtype))
        return model, model_device(model)

    def student(self, spec):
        """A student checkpoint dir through its projection heads (teacher space); other specs load as teachers."""
        if isinstance(spec, (str, os.PathLike)) and is_student_dir(spec):
            student = load_student(spec).to(device=self.device, dtype=self.dtype).eval()
            return self._remember(spec, student.teacher_space())
        return self._remember(spec, load_model(spec, device=self.device, dtype=self.dtype))

    def measure(self, name: str, model, side: int) -> None:
        """The cost of `model` at square inputs of `side` px on its own device, unless costs are off."""
        if self.costs is not None:
            self.costs[name] = model_cost(model, side, model_device(model))

    def _remember(self, spec, model):
        self.fingerprints[spec_text(spec)] = getattr(model, "fingerprint", None)
        return model


def spec_text(spec) -> str:
    return str(spec) if isinstance(spec, (str, os.PathLike)) else f"<{type(spec).__name__} object>"


@dataclass
class TaskResult:
    dataset: str
    models: dict[str, dict] = field(default_factory=dict)
    baselines: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)  # images (and texts) scored and skipped, where a task reads files
    bootstrap: dict = field(default_factory=dict)  # sampling error over images, where a task computes it
