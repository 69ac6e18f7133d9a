"""The contract between `evaluate` and the task modules: how models are loaded, what a task returns."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from distill.eval.models import load_model, model_device
from students.checkpoint import is_student_dir, load_student
from tipscore.errors import UserError


def check_positive(options, *names: str) -> None:
    """One-line UserError for an option that must be a positive integer (None allowed: the default)."""
    for name in names:
        value = getattr(options, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{name.replace('_', '-')} {value!r} is invalid; expected a positive integer")


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
