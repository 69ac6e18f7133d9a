"""timm vision transformers (e.g. `vit_giant_patch14_reg1_tipsv2`), vision only.

Spec: `timm:NAME[,checkpoint=PATH][,KEY=VALUE...]`; extra KEY=VALUE pairs go to `timm.create_model`
(e.g. `img_size=224`). A `tipsdistill export --format timm` folder loads by its path alone: its
`timm_config.json` holds the name, the keywords and the data config; the export of a `timm:NAME` student
(any timm image model) also holds its token layout and CLS maps and loads as that student's vision tower. The
checkpoint goes through timm's own `checkpoint_filter_fn`, so a timm state dict, a DINOv2/official-layout vision
state dict and the multimodal TIPSv2 checkpoint (`vision_encoder.*`) all load; files are read as safetensors or `torch.load(weights_only=True)`.
At sizes other than the native one timm resamples position embeddings itself (bicubic), where
transformers' TIPSv2 uses bilinear: tokens then differ slightly between the two sources.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import timm
import torch
from timm.layers import Attention
from timm.models import VisionTransformer

from teachers.base import Teacher
from common.errors import UserError
from teachers.fingerprint import fingerprint
from teachers.student_checkpoint import check_state_dict, read_weights
from teachers.timm_vision import EXPORT_KEY, EXPORT_TOKENS, TimmVision, TimmVisionTeacher
from teachers.tipsv2_tokens import split_tokens
from common.types import ImageTokens

# The files of a `tipsdistill export --format timm` folder (the exporter writes them under these names).
EXPORT_MANIFEST = "timm_config.json"
EXPORT_WEIGHTS = "model.safetensors"


class TimmTeacher(Teacher):
    def __init__(self, model: VisionTransformer, name: str):
        cfg = model.pretrained_cfg
        architecture = {"family": "timm", "name": name, "modules": str(model)}
        super().__init__(
            width=model.embed_dim, patch_size=model.patch_embed.patch_size[0],
            image_size=model.patch_embed.img_size[0], num_registers=model.num_reg_tokens,
            fingerprint=fingerprint(architecture, model.state_dict()),
            mean=tuple(cfg.get("mean", (0.0, 0.0, 0.0))), std=tuple(cfg.get("std", (1.0, 1.0, 1.0))),
        )
        self.model = model
        self.name = name

    def _image_tokens(self, pixels: torch.Tensor, value_trick: bool) -> ImageTokens:
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        if not value_trick:
            return split_tokens(self.model.forward_features(pixels), self.num_registers, grid)
        model = self.model
        last = model.blocks[-1]
        if not (isinstance(last.attn, Attention) and last.attn.gate is None):
            raise UserError(f"value_trick is not supported for {self.name}: its last block is not a plain timm "
                            f"attention block")
        x = model.norm_pre(model._pos_embed(model.patch_embed(pixels)))
        for block in model.blocks[:-1]:
            x = block(x)
        return split_tokens(model.norm(_value_trick_block(last, x)), self.num_registers, grid)


def _value_trick_block(block, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP on a timm `Block`: attention output = proj(v(norm1(x))), no token mixing."""
    attn = block.attn
    v = attn.qkv(block.norm1(x)).unflatten(-1, (3, -1))[..., 2, :]
    x = x + block.ls1(attn.proj(attn.norm(v)))
    return x + block.ls2(block.mlp(block.norm2(x)))


def load(name: str, *, checkpoint: str | None = None, **model_kwargs) -> TimmTeacher:
    if not timm.is_model(name):  # also accepts a pretrained tag such as ".webli"
        raise UserError(f"unknown timm model {name!r}; expected a timm ViT name such as vit_giant_patch14_reg1_tipsv2")
    kwargs = dict(model_kwargs)
    kwargs.setdefault("num_classes", 0)
    kwargs.setdefault("dynamic_img_size", True)
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise UserError(f"{checkpoint}: no such timm checkpoint file")
        if Path(checkpoint).suffix == ".npz":
            raise UserError(f"{checkpoint}: official .npz files load with the spec npz:VISION.npz[,TEXT.npz]; "
                            f"expected a .safetensors or .pth state dict for timm")
        # `file=` routes the checkpoint through the model's checkpoint_filter_fn (key conversion).
        overlay = {**kwargs.get("pretrained_cfg_overlay", {}), "file": str(checkpoint)}
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    try:
        model = timm.create_model(name, **kwargs)
    except (pickle.UnpicklingError, RuntimeError, TypeError) as err:
        if "weights_only" in str(err):  # torch.load(weights_only=True) met a pickled non-tensor object
            raise UserError(f"{checkpoint}: holds pickled objects beyond tensors; refusing to unpickle it "
                            f"(expected a plain state dict, ideally .safetensors)") from None
        raise UserError(f"timm could not build {name} with {kwargs} ({str(err).splitlines()[0]})") from None
    if not isinstance(model, VisionTransformer) or model.cls_token is None:
        raise UserError(f"timm model {name} is not a ViT with a CLS token; expected e.g. vit_*_reg1_tipsv2")
    return TimmTeacher(model, name)


def load_export(directory: Path, **options) -> Teacher:
    """A timm export folder: the architecture keywords and data config come from its manifest (options win)."""
    try:
        manifest = json.loads((directory / EXPORT_MANIFEST).read_text())
        student = manifest.get(EXPORT_KEY)  # a timm student's export: its tokens need its CLS maps and feature level
        if student is None:
            name, kwargs = manifest["model_name"], dict(manifest["kwargs"])
            overlay = dict(manifest["pretrained_cfg"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{directory / EXPORT_MANIFEST}: not a timm export manifest ({err!r}); expected the "
                        f"model_name, kwargs and pretrained_cfg that `tipsdistill export --format timm` writes") from None
    if student is not None:
        return _timm_student_export(directory, student)
    options = {**kwargs, "pretrained_cfg_overlay": overlay, **options}
    return load(name, checkpoint=str(directory / EXPORT_WEIGHTS), **options)


def _timm_student_export(directory: Path, description: dict) -> TimmVisionTeacher:
    """The timm weights plus the CLS maps beside them, as the student's vision tower."""
    vision = TimmVision.from_description(description, str(directory / EXPORT_MANIFEST))
    state = {f"model.{k}": v for k, v in read_weights(directory / EXPORT_WEIGHTS).items()}
    state.update(read_weights(directory / EXPORT_TOKENS))
    check_state_dict(vision, state, str(directory), f"timm:{vision.name}")
    vision.load_state_dict(state)
    return TimmVisionTeacher(vision)
