"""A student on disk: `model.safetensors` + `student.json` (+ the tokenizer via `save_pretrained`).

`student.json` holds everything needed to rebuild the modules (both towers' configs, the head kind
and teacher width) and free-form metadata (recipe, teacher fingerprint, evaluation) that exports
carry into model cards. Loading never unpickles: safetensors and JSON only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, Tipsv2TextConfig, Tipsv2TextModel, Tipsv2VisionConfig, Tipsv2VisionModel
from transformers.initialization import no_init_weights

from teachers.atomic import atomic_directory
from students.heads import ProjectionHeads
from students.model import Student
from teachers.errors import UserError

FORMAT = "tipsdistill-student"
VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "student.json"


def is_student_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def save_student(student: Student, directory: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Atomic: the directory appears complete or not at all. Replaces an earlier student checkpoint
    at the same path (training saves `last` repeatedly), never any other non-empty directory."""
    directory = Path(directory)
    if directory.is_dir() and any(directory.iterdir()) and not is_student_dir(directory):
        raise UserError(f"{directory} is a non-empty directory that is not a student checkpoint; not overwriting it")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "name": student.name,
        "vision_config": student.vision.config.to_dict(),
        "text_config": None if student.text is None else student.text.config.to_dict(),
        "teacher_width": student.teacher_width,
        "head_kind": student.head_kind,
        "metadata": {**student.metadata, **(metadata or {})},
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in student.state_dict().items()}
    with atomic_directory(directory, overwrite=True) as tmp:
        save_file(state, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if student.tokenizer is not None:
            student.tokenizer.save_pretrained(tmp)


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


def load_student(directory: str | os.PathLike) -> Student:
    directory = Path(directory)
    manifest = read_manifest(directory)
    state = read_weights(directory / WEIGHTS)
    try:
        with no_init_weights():  # every weight is overwritten below; random init is slow at B/L/SO sizes
            vision = Tipsv2VisionModel(Tipsv2VisionConfig.from_dict(manifest["vision_config"]))
            text = None
            if manifest["text_config"] is not None:
                text = Tipsv2TextModel(Tipsv2TextConfig.from_dict(manifest["text_config"]))
        heads = None
        if manifest["teacher_width"] is not None:
            heads = ProjectionHeads(vision.config.hidden_size, manifest["teacher_width"], manifest["head_kind"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{directory / MANIFEST} describes no valid student ({exc})") from None
    tokenizer = AutoTokenizer.from_pretrained(directory) if (directory / "tokenizer_config.json").is_file() else None
    student = Student(manifest["name"], vision, text, heads, tokenizer=tokenizer, metadata=manifest.get("metadata"))
    check_state_dict(student, state, str(directory / WEIGHTS), f"student {manifest['name']!r} in {MANIFEST}")
    student.load_state_dict(state)
    return student
