"""The tipsdistill student checkpoint format, read side: `model.safetensors` + `student.json` (+ the tokenizer
saved with `save_pretrained`).

`student.json` holds everything needed to rebuild the modules (both towers' configs, or for a `timm:NAME`
student its `timm` section: name, keywords, feature stride, image size; the head kind and teacher width) and
free-form metadata (recipe, teacher fingerprint, evaluation) that exports carry into model cards. The teacher
layer reads the towers (a student is a TIPSv2 encoder like any other, a timm student a vision-only one); the
`students` package writes the format and adds the projection heads. Loading never unpickles:
safetensors and JSON only.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from transformers import Tipsv2TextConfig, Tipsv2TextModel, Tipsv2VisionConfig, Tipsv2VisionModel
from transformers.initialization import no_init_weights

from teachers.timm_vision import TimmVision
from teachers.tokenizer import load_tokenizer
from common.errors import UserError
from common.types import PRIMARY_TEACHER

FORMAT = "tipsdistill-student"
VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "student.json"


@dataclass
class StudentCheckpoint:
    manifest: dict[str, Any]
    state: dict[str, torch.Tensor]  # every tensor of the checkpoint: vision.*, text.*, temperature, heads.*
    vision: Tipsv2VisionModel | TimmVision  # loaded
    text: Tipsv2TextModel | None  # loaded
    tokenizer: object | None

    @property
    def temperature(self) -> float | None:
        return float(self.state["temperature"]) if "temperature" in self.state else None


def is_student_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise UserError(f"{directory} is not a student checkpoint (no {MANIFEST}); "
                        "expected a dir written by student.save")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path} has format {manifest.get('format')!r}; expected {FORMAT!r}")
    return manifest


def recorded_teachers(metadata: dict[str, Any]) -> dict[str, dict]:
    """The teachers a student's metadata records ({name, spec, fingerprint} by name, the primary first): a
    multi-teacher run's `teacher.teachers` list, else its one teacher as "teacher"; {} when none is recorded."""
    teacher = metadata.get("teacher")
    if not isinstance(teacher, dict):
        return {}
    if teacher.get("teachers"):
        return {t["name"]: t for t in teacher["teachers"]}
    return {PRIMARY_TEACHER: teacher}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"missing weights file {path}")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """One-line UserError when `state` was written for another architecture than `module`."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else
                  f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else
                  f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}")
        raise UserError(f"{source} does not match the architecture of {what}: {detail}")


def _tower(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, source: str, what: str) -> nn.Module:
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    check_state_dict(module, own, source, what)
    module.load_state_dict(own)
    return module


def read_student_checkpoint(directory: str | os.PathLike) -> StudentCheckpoint:
    """The manifest, all tensors, and both towers built and loaded (no heads)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    state = read_weights(directory / WEIGHTS)
    source, name = str(directory / WEIGHTS), f"student {manifest.get('name')!r} in {MANIFEST}"
    try:
        with no_init_weights():  # every weight is overwritten below; random init is slow at B/L/SO sizes
            vision = (TimmVision.from_description(manifest["timm"], str(directory / MANIFEST)) if manifest.get("timm")
                      else Tipsv2VisionModel(Tipsv2VisionConfig.from_dict(manifest["vision_config"])))
            text = (None if manifest["text_config"] is None
                    else Tipsv2TextModel(Tipsv2TextConfig.from_dict(manifest["text_config"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{directory / MANIFEST} describes no valid student ({exc})") from None
    _tower(vision, state, "vision.", source, name)
    if text is not None:
        _tower(text, state, "text.", source, name)
    tokenizer = load_tokenizer(directory) if (directory / "tokenizer_config.json").is_file() else None
    return StudentCheckpoint(manifest, state, vision, text, tokenizer)
