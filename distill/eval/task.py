"""The contract between `evaluate` and the task modules: how models are loaded, what a task returns."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from distill.eval.models import load_model, model_device
from students.checkpoint import is_student_dir, load_student


@dataclass
class ModelLoader:
    device: str = "cpu"
    dtype: torch.dtype = torch.float32

    def __call__(self, spec):
        """(model, the device its inputs go to); specs are loaded only when their turn comes."""
        model = load_model(spec, device=self.device, dtype=self.dtype)
        return model, model_device(model)

    def student(self, spec):
        """A student checkpoint dir keeps its projection heads (`project`); other specs load as teachers."""
        if isinstance(spec, (str, os.PathLike)) and is_student_dir(spec):
            return load_student(spec).to(device=self.device, dtype=self.dtype).eval()
        return load_model(spec, device=self.device, dtype=self.dtype)


@dataclass
class TaskResult:
    dataset: str
    models: dict[str, dict] = field(default_factory=dict)
    baselines: dict = field(default_factory=dict)
