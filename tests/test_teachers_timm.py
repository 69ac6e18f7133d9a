"""timm source: the same TIPSv2 weights in a timm `vit_*_reg1_tipsv2` give the same vision tokens."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformers import Tipsv2Model

from conftest import tiny_tipsv2_config
from teachers import load_teacher
from common.errors import UserError
from teachers.official_npz import official_from_tipsv2
from teachers.tipsv2_teacher import Tipsv2Teacher

TOL = 1e-5
TINY = "embed_dim=32,depth=2,num_heads=2,patch_size=8,img_size=32"


def _vision_checkpoint(model: Tipsv2Model, path, prefix: str = "") -> str:
    """The vision tower in the official (DINOv2-style) key layout, as timm's checkpoint_filter_fn reads it."""
    vision, _ = official_from_tipsv2(model, model.config)
    save_file({prefix + k: torch.from_numpy(v).contiguous() for k, v in vision.items()}, str(path))
    return str(path)


class _NotATensor:
    """Any non-tensor object: `weights_only` loading must refuse to unpickle it."""


def _assert_same(a, b):
    for x, y in ((a.cls, b.cls), (a.registers, b.registers), (a.patches, b.patches)):
        assert x.shape == y.shape and (x - y).abs().max() <= TOL


@pytest.mark.parametrize("prefix", ["", "vision_encoder."])  # official vision file; multimodal checkpoint
def test_timm_matches_transformers(tiny_tipsv2_dir, tmp_path, prefix):
    model = Tipsv2Model.from_pretrained(tiny_tipsv2_dir)
    reference = load_teacher(tiny_tipsv2_dir)
    checkpoint = _vision_checkpoint(model, tmp_path / "vision.safetensors", prefix)
    teacher = load_teacher(f"timm:vit_base_patch14_reg1_tipsv2,checkpoint={checkpoint},{TINY}")
    assert (teacher.width, teacher.patch_size, teacher.image_size, teacher.num_registers) == (32, 8, 32, 1)
    assert not teacher.has_text and teacher.temperature is None
    pixels = torch.rand(2, 3, 32, 32)
    _assert_same(teacher.encode_image(pixels), reference.encode_image(pixels))
    _assert_same(teacher.encode_image(pixels, value_trick=True), reference.encode_image(pixels, value_trick=True))
    # another size runs (timm resamples position embeddings bicubically, transformers bilinearly)
    assert teacher.encode_image(torch.rand(1, 3, 48, 40)).grid == (6, 5)


def test_timm_swiglu_giant(tmp_path):
    torch.manual_seed(0)
    model = Tipsv2Model(tiny_tipsv2_config(vocab_size=16, swiglu=True)).eval()  # SwiGLU hidden 88
    checkpoint = _vision_checkpoint(model, tmp_path / "g.safetensors")
    teacher = load_teacher(f"timm:vit_giant_patch14_reg1_tipsv2,checkpoint={checkpoint},{TINY}", mlp_ratio=2 * 88 / 32)
    reference = Tipsv2Teacher(model.vision_model).freeze()
    pixels = torch.rand(2, 3, 32, 32)
    _assert_same(teacher.encode_image(pixels), reference.encode_image(pixels))


def test_timm_errors(tmp_path):
    with pytest.raises(UserError, match="unknown timm model"):
        load_teacher("timm:vit_nonexistent_tipsv2")
    with pytest.raises(UserError, match="no such timm checkpoint"):
        load_teacher(f"timm:vit_base_patch14_reg1_tipsv2,checkpoint={tmp_path / 'nope.safetensors'}")
    torch.save({"pos_embed": _NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="refusing to unpickle"):
        load_teacher(f"timm:vit_base_patch14_reg1_tipsv2,checkpoint={tmp_path / 'evil.pth'},{TINY}")
    teacher = load_teacher(f"timm:vit_base_patch14_reg1_tipsv2,{TINY}")  # random init, no checkpoint
    with pytest.raises(UserError, match="no text tower"):
        teacher.encode_text(["a cat"])
