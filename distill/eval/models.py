"""Turn a `--model` spec into a model object with the teacher interface (or pass an object through).

Every spec goes through `teachers.load_teacher` (hub ids, save_pretrained dirs, .npz pairs, timm names,
HF encoders, student checkpoints and exported students), so evaluation needs no training state.
"""
from __future__ import annotations

import os
import re

import torch

import teachers
from tipscore.errors import UserError


def load_model(spec, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    if isinstance(spec, (str, os.PathLike)):
        return teachers.load_teacher(str(spec), dtype=dtype, device=device)
    return spec


def model_device(model) -> torch.device:
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if params is not None else None
    return first.device if first is not None else torch.device("cpu")


_NAME = re.compile(r"[\w.-]+")


def parse_model_args(items: list[str]) -> dict[str, str]:
    """`NAME=SPEC`, or a bare SPEC named after its last path component (a spec may itself hold `key=value`
    items, e.g. `timm:NAME,checkpoint=PATH`, so only a plain word before the first `=` is a name)."""
    models: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not _NAME.fullmatch(name):
            name, spec = os.path.basename(os.path.normpath(item.split(",")[0])), item
        if not name or not spec:
            raise UserError(f"--model {item!r} is invalid; expected NAME=SPEC")
        if name in models:
            raise UserError(f"model name {name!r} is given twice; expected unique NAME=SPEC names")
        models[name] = spec
    return models
