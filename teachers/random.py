"""Random-weight TIPSv2 teachers of the released shapes, for benchmarks and tests where real weights are not at
hand (throughput and memory depend on the shapes, not on the values)."""
from __future__ import annotations

import torch
from transformers import Tipsv2VisionModel

from teachers.tipsv2_sizes import tipsv2_config
from teachers.tipsv2_teacher import Tipsv2Teacher


def random_tipsv2_teacher(size: str, *, depth: int | None = None, image_size: int | None = None,
                          device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                          seed: int = 0) -> Tipsv2Teacher:
    """A `teachers.tipsv2_sizes` vision tower (optionally with fewer blocks), built on the meta device and
    filled in place: transformers' per-module init of a 1.1B g/14 would take minutes on a CPU. (The tower has
    parameters only, no buffers, so nothing is left uninitialised.)"""
    config = tipsv2_config(size).vision_config
    config.num_hidden_layers = depth or config.num_hidden_layers
    if image_size is not None:
        config.image_size = image_size
    with torch.device("meta"):
        vision = Tipsv2VisionModel(config)
    vision.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in vision.named_parameters():
            if name.endswith("lambda1"):
                p.fill_(0.1)  # small layer scales keep 40 random blocks numerically tame
            elif p.ndim == 1 and ("norm" in name or name.startswith("layernorm")):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return Tipsv2Teacher(vision).to(dtype=dtype).freeze()
