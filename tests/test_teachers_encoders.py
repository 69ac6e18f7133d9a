"""Other Hugging Face encoders (DINOv2 with registers, SigLIP, CLIP) through the same Teacher interface."""
from __future__ import annotations

import pytest
import torch
from transformers import (BitImageProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionModel,
                          Dinov2WithRegistersConfig, Dinov2WithRegistersModel, Siglip2Config, Siglip2ImageProcessor,
                          Siglip2Model, SiglipConfig, SiglipImageProcessor, SiglipModel)

from conftest import CORPUS
from teachers import load_teacher
from common.errors import UserError

TOL = 1e-5
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32)


def _text(vocab_size):
    return dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                vocab_size=vocab_size, max_position_embeddings=16)


def _save(model, processor, path, tokenizer=None):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return model.eval()


def _normalised(pixels, processor):
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _close(a, b):
    return a.shape == b.shape and (a - b).abs().max().item() <= TOL


def test_dinov2_with_registers(tmp_path):
    torch.manual_seed(0)
    model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**VISION, num_register_tokens=4, mlp_ratio=2))
    processor = BitImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    model = _save(model, processor, tmp_path)
    teacher = load_teacher(tmp_path)
    assert (teacher.width, teacher.patch_size, teacher.num_registers, teacher.has_text) == (32, 8, 4, False)
    pixels = torch.rand(2, 3, 32, 40)
    tokens = teacher.encode_image(pixels)
    with torch.no_grad():
        seq = model(pixel_values=_normalised(pixels, processor)).last_hidden_state
    assert _close(tokens.cls, seq[:, 0]) and _close(tokens.registers, seq[:, 1:5])
    assert _close(tokens.patches, seq[:, 5:].reshape(2, 4, 5, 32))
    with pytest.raises(UserError, match="no text tower"):
        teacher.encode_text(["a cat"])
    with pytest.raises(UserError, match="value_trick is not supported"):
        teacher.encode_image(pixels, value_trick=True)


def test_siglip(tmp_path, tiny_tokenizer):
    config = SiglipConfig(vision_config=dict(VISION, intermediate_size=64), text_config=_text(len(tiny_tokenizer)))
    torch.manual_seed(0)
    processor = SiglipImageProcessor()
    model = _save(SiglipModel(config), processor, tmp_path, tiny_tokenizer)
    teacher = load_teacher(tmp_path)
    assert teacher.has_text and teacher.num_registers == 0
    assert teacher.temperature == pytest.approx(torch.exp(-model.logit_scale).item())
    pixels = torch.rand(2, 3, 32, 32)
    tokens = teacher.encode_image(pixels)
    with torch.no_grad():
        out = model.vision_model(pixel_values=_normalised(pixels, processor))
        batch = tiny_tokenizer(CORPUS[:3], padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        text = model.get_text_features(**batch).pooler_output
    assert _close(tokens.cls, out.pooler_output) and tokens.registers.shape == (2, 0, 32)
    assert _close(tokens.patches, out.last_hidden_state.reshape(2, 4, 4, 32))
    assert _close(teacher.encode_text(CORPUS[:3]), torch.nn.functional.normalize(text, dim=-1))
    _drops_its_text_tower(teacher, pixels, tokens)


def _drops_its_text_tower(teacher, pixels, tokens):
    """A teacher of a set after the first keeps its image path and fingerprint, not its text tower's weights."""
    fingerprint, before = teacher.fingerprint, sum(p.numel() for p in teacher.parameters())
    assert teacher.drop_text() is teacher and not teacher.has_text
    assert sum(p.numel() for p in teacher.parameters()) < before and teacher.fingerprint == fingerprint
    after = teacher.encode_image(pixels)
    assert all(torch.equal(getattr(after, k), getattr(tokens, k)) for k in ("cls", "registers", "patches"))


def test_clip(tmp_path, tiny_tokenizer):
    config = CLIPConfig(vision_config=dict(VISION, intermediate_size=64), text_config=_text(len(tiny_tokenizer)),
                        projection_dim=24)
    torch.manual_seed(0)
    processor = CLIPImageProcessor()
    model = _save(CLIPModel(config), processor, tmp_path, tiny_tokenizer)
    teacher = load_teacher(tmp_path)
    assert teacher.width == 24 and teacher.has_text
    pixels = torch.rand(2, 3, 32, 32)
    tokens = teacher.encode_image(pixels)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=_normalised(pixels, processor)).pooler_output
        batch = tiny_tokenizer(CORPUS[:3], padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        text = model.get_text_features(**batch).pooler_output
    assert _close(tokens.cls, image)  # CLS through post-LN + projection is CLIP's image embedding
    assert tokens.patches.shape == (2, 4, 4, 24)
    assert _close(teacher.encode_text(CORPUS[:3]), torch.nn.functional.normalize(text, dim=-1))
    _drops_its_text_tower(teacher, pixels, tokens)


def test_clip_vision_only(tmp_path):
    config = CLIPConfig(vision_config=dict(VISION, intermediate_size=64)).vision_config
    torch.manual_seed(0)
    processor = CLIPImageProcessor()
    model = _save(CLIPVisionModel(config), processor, tmp_path)
    teacher = load_teacher(tmp_path)
    assert teacher.width == 32 and not teacher.has_text
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        pooled = model(pixel_values=_normalised(pixels, processor)).pooler_output
    assert _close(teacher.encode_image(pixels).cls, pooled)


def test_siglip2_against_its_processor(tmp_path, tiny_tokenizer):
    vision = dict(VISION, intermediate_size=64, num_patches=16)
    del vision["image_size"]
    config = Siglip2Config(vision_config=vision, text_config=_text(len(tiny_tokenizer)))
    torch.manual_seed(0)
    processor = Siglip2ImageProcessor(patch_size=8, max_num_patches=16)
    model = _save(Siglip2Model(config), processor, tmp_path, tiny_tokenizer)
    teacher = load_teacher(tmp_path)
    assert (teacher.image_size, teacher.has_text) == (32, True)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)  # already at the processor's target size
    with torch.no_grad():
        out = model.get_image_features(**processor(images=[image], return_tensors="pt"))
    tokens = teacher.encode_image(image[None].float() / 255)
    assert _close(tokens.cls, out.pooler_output)
    assert _close(tokens.patches, out.last_hidden_state.reshape(1, 4, 4, 32))
    assert teacher.encode_text(CORPUS[:2]).shape == (2, 32)
