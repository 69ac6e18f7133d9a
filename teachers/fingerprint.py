"""A stable identity for a teacher: sha256 over its architecture description and its weights.

Hashed, in order: the architecture as canonical JSON (sorted keys; config fields that do not change
the computation such as `_name_or_path`, `transformers_version`, `dtype` are dropped), then for every
state-dict tensor sorted by name: its name, dtype, shape and raw bytes. Tensors are hashed one at a
time, so memory stays at one tensor even for the 1.1B-parameter g/14. The compute dtype chosen at
load time is not part of it: sources hash the weights as loaded, before the cast.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch

_VOLATILE = {"transformers_version", "dtype", "torch_dtype", "architectures", "output_attentions",
             "output_hidden_states", "return_dict", "use_cache"}


def canonical_config(config) -> dict:
    """A transformers config as a plain dict without bookkeeping fields (recursively)."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in _VOLATILE and not str(k).startswith("_")}
        return value

    return clean(config.to_dict())


def fingerprint(architecture: Mapping, tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(json.dumps(architecture, sort_keys=True, default=str).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"\n{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).contiguous().cpu().view(torch.uint8).numpy())
    return digest.hexdigest()
