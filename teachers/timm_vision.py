"""Any timm image model as a TIPSv2-shaped token encoder: the vision tower of a `timm:NAME` student.

Tokens come from timm's own interfaces: `forward_intermediates` gives the dense map of one feature level (its
stride is the encoder's "patch size", the deepest level with that stride is used), `forward_head(pre_logits=True)`
the pooled vector. TIPSv2 has two global tokens, CLS1 (alt-text) and CLS2 (the register, synthetic captions); a
timm model has one pooled vector, so two learned linear maps of it give the two, at the feature level's width.
Pixels arrive as RGB in [0,1] (the toolkit's encoder interface) and are normalised here with the model's own
`pretrained_cfg` mean/std, so an ImageNet-pretrained initialisation sees the inputs it was trained on.

The student side (`students.timm_student`) trains it; the teacher layer rebuilds it from a checkpoint's
`student.json` (`timm` section) or from a `--format timm` export, so it lives here, below both.
"""
from __future__ import annotations

import difflib
import pickle
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from common.errors import UserError
from common.types import ImageTokens
from teachers.base import Teacher
from teachers.fingerprint import fingerprint

PREFIX = "timm:"
# Beside a `--format timm` export's model.safetensors: the CLS maps and the token layout, which timm's own
# model does not hold.
EXPORT_TOKENS = "tipsdistill_tokens.safetensors"
EXPORT_KEY = "tipsdistill_tokens"


def is_timm_name(name: str) -> bool:
    return str(name).startswith(PREFIX)


def create_timm_model(name: str, kwargs: dict[str, Any], weights: str | None = None, *,
                      device: str | None = None) -> nn.Module:
    """`timm.create_model(name, num_classes=0, **kwargs)`, weights from a local file through timm's own
    `pretrained_cfg_overlay=dict(file=...)` (its checkpoint filter converts the keys, the classifier is dropped)."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise UserError(f"unknown timm model {name!r}; expected a name from timm.list_models(){hint}")
    options = {"num_classes": 0, **kwargs}
    if weights is not None:
        if not Path(weights).is_file():
            raise UserError(f"student.init {weights}: no such weights file; expected a local .safetensors or .pth "
                            f"state dict for {name}")
        options.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    try:
        with torch.device(device) if device else nullcontext():
            return timm.create_model(name, **options)
    except (pickle.UnpicklingError, RuntimeError, TypeError, ValueError, AssertionError) as err:
        if "weights_only" in str(err):
            raise UserError(f"{weights}: holds pickled objects beyond tensors; refusing to unpickle it "
                            "(expected a plain state dict, ideally .safetensors)") from None
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"timm could not build {name} with {kwargs}{f' from {weights}' if weights else ''} "
                        f"({first})") from None


def feature_level(model: nn.Module, name: str, stride: int | None) -> tuple[int, int]:
    """(index into `feature_info`, stride): the deepest level at `stride`, the last level when None."""
    info = getattr(model, "feature_info", None)
    if not info or not hasattr(model, "forward_intermediates"):
        raise UserError(f"timm model {name} has no spatial features (no feature_info / forward_intermediates); "
                        "expected a convnet or ViT with dense feature maps")
    reductions = [entry["reduction"] for entry in info]
    stride = reductions[-1] if stride is None else stride
    if stride not in reductions:
        raise UserError(f"student.feature_stride {stride} is not a feature stride of {name}; expected one of "
                        f"{', '.join(map(str, sorted(set(reductions))))}")
    return len(reductions) - 1 - reductions[::-1].index(stride), stride


def timm_patch_size(name: str, kwargs: dict[str, Any], stride: int | None) -> int:
    """The stride a `timm:NAME` student's tokens have, from the architecture alone (built on the meta device)."""
    bare = name[len(PREFIX):]
    return feature_level(create_timm_model(bare, kwargs, device="meta"), bare, stride)[1]


class TimmVision(nn.Module):
    """State dict: `model.*` (the timm model, classifier-free), `cls1.*`, `cls2.*`."""

    def __init__(self, name: str, *, image_size: int, kwargs: dict[str, Any] | None = None,
                 feature_stride: int | None = None, weights: str | None = None):
        super().__init__()
        self.name, self.kwargs, self.image_size = name, dict(kwargs or {}), image_size
        self.model = create_timm_model(name, self.kwargs, weights)
        self.level, self.patch_size = feature_level(self.model, name, feature_stride)
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.0,) * 3)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (1.0,) * 3)).view(1, 3, 1, 1), persistent=False)
        self.input_multiple = self.model.feature_info[-1]["reduction"]  # the deepest stage's: the whole net runs
        self.width, pooled = self._probe()
        self.fixed_size = not self._runs_at(size=image_size + self.input_multiple)
        self.cls1 = nn.Linear(pooled, self.width)
        self.cls2 = nn.Linear(pooled, self.width)

    def _probe(self) -> tuple[int, int]:
        """(feature width, pooled width) from one forward at `image_size`: the resolution check, before training."""
        size, stride = self.image_size, self.patch_size
        if size % stride:
            raise UserError(f"student.image_size {size} is not a multiple of timm:{self.name}'s feature stride "
                            f"{stride}")
        try:
            dense, pooled = self._dry_run(size)
        except (RuntimeError, AssertionError, ValueError) as err:
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise UserError(f"timm:{self.name} cannot take {size} px images ({first}); expected its input size "
                            f"{self.model.pretrained_cfg.get('input_size', '?')[-1]} or timm_kwargs that fit "
                            f"(e.g. img_size: {size} for a ViT)") from None
        if dense.ndim != 4 or tuple(dense.shape[-2:]) != (size // stride, size // stride):
            raise UserError(f"timm:{self.name} gives features of shape {tuple(dense.shape)} at level {self.level}; "
                            f"expected a {size // stride}x{size // stride} map for stride {stride}")
        return dense.shape[1], pooled.shape[-1]

    def _dry_run(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One eval-mode forward of a blank image (batch-norm statistics untouched, no randomness drawn)."""
        mode = self.model.training
        try:
            with torch.no_grad():
                return self._features(torch.zeros(1, 3, size, size), self.model.eval())
        finally:
            self.model.train(mode)

    def _runs_at(self, size: int) -> bool:
        """Whether the model takes another size than its own (a ViT without dynamic_img_size does not)."""
        try:
            self._dry_run(size)
        except (RuntimeError, AssertionError, ValueError):
            return False
        return True

    def _features(self, pixels: torch.Tensor, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels - self.mean.to(pixels.dtype)) / self.std.to(pixels.dtype)
        final, (dense,) = model.forward_intermediates(x, indices=[self.level], norm=True, output_fmt="NCHW")
        return dense, model.forward_head(final, pre_logits=True)

    def forward(self, pixels: torch.Tensor) -> ImageTokens:
        """pixels: (B,3,H,W) RGB in [0,1], H and W multiples of the stride."""
        h, w = pixels.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise UserError(f"image size {h}x{w} is not a multiple of timm:{self.name}'s feature stride "
                            f"{self.patch_size}")
        if self.fixed_size and (h, w) != (self.image_size, self.image_size):
            raise UserError(f"image size {h}x{w}: timm:{self.name} takes {self.image_size}x{self.image_size} only; "
                            "expected that size, or timm_kwargs dynamic_img_size: true for a ViT")
        dense, pooled = self._features(pixels, self.model)
        return ImageTokens(self.cls1(pooled), self.cls2(pooled)[:, None], dense.permute(0, 2, 3, 1))

    def describe(self) -> dict[str, Any]:
        """What rebuilds the module (the `timm` section of student.json)."""
        return {"model": self.name, "kwargs": self.kwargs, "feature_stride": self.patch_size,
                "image_size": self.image_size}

    @classmethod
    def from_description(cls, description: dict[str, Any], source: str) -> "TimmVision":
        try:
            return cls(description["model"], image_size=description["image_size"], kwargs=description["kwargs"],
                       feature_stride=description["feature_stride"])
        except (KeyError, TypeError) as exc:
            raise UserError(f"{source} describes no valid timm student ({exc!r})") from None

    @property
    def fingerprint(self) -> str:
        """Architecture (name, keywords, stride, size) and every weight, as for any teacher."""
        return fingerprint({"family": "timm-student", **self.describe()},
                           {f"vision.{k}": v for k, v in self.state_dict().items()})

    def timm_manifest(self) -> dict[str, Any]:
        """`timm_config.json` of a `--format timm` export: what `timm.create_model` needs, the data config timm's
        transforms read, and (for the toolkit) the token layout."""
        size = self.image_size
        cfg = {"architecture": self.name, "hf_hub_id": None, "input_size": [3, size, size],
               "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}
        return {"model_name": self.name, "kwargs": {"num_classes": 0, **self.kwargs}, "pretrained_cfg": cfg,
                EXPORT_KEY: self.describe()}


class TimmVisionTeacher(Teacher):
    """A timm student's vision tower as a frozen encoder (no text). Its CLS1/CLS2 come from the pooled vector and
    a convnet has no attention to apply MaskCLIP's value trick to, so `value_trick` gives the plain tokens."""

    def __init__(self, vision: TimmVision):
        super().__init__(width=vision.width, patch_size=vision.patch_size, image_size=vision.image_size,
                         num_registers=1, fingerprint=vision.fingerprint)
        self.vision = vision

    def _image_tokens(self, pixels: torch.Tensor, value_trick: bool) -> ImageTokens:
        return self.vision(pixels)
