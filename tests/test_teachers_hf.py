"""TIPSv2 through transformers: load_teacher(save_pretrained dir) == calling transformers directly."""
from __future__ import annotations

import torch
from transformers import AutoTokenizer, Tipsv2Model

from conftest import CORPUS
from teachers import Teacher, load_teacher

TOL = 1e-5


def _max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def test_hf_dir_matches_transformers(tiny_tipsv2_dir):
    teacher = load_teacher(tiny_tipsv2_dir)
    model = Tipsv2Model.from_pretrained(tiny_tipsv2_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_tipsv2_dir)
    torch.manual_seed(1)
    for h, w in ((32, 32), (48, 40)):  # native, and a non-square size that needs pos-emb interpolation
        pixels = torch.rand(2, 3, h, w)
        tokens = teacher.encode_image(pixels)
        with torch.no_grad():
            seq = model.vision_model(pixel_values=pixels).last_hidden_state
        assert tokens.grid == (h // 8, w // 8)
        assert _max_diff(tokens.cls, seq[:, 0]) <= TOL
        assert _max_diff(tokens.registers, seq[:, 1:2]) <= TOL
        assert _max_diff(tokens.patches, seq[:, 2:].reshape(2, h // 8, w // 8, -1)) <= TOL

    texts = CORPUS[:4]
    batch = tokenizer(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch, pixel_values=torch.rand(1, 3, 32, 32)).text_embeds
    embeddings = teacher.encode_text(texts)
    assert embeddings.shape == (4, 32)
    assert _max_diff(embeddings, expected) <= TOL
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_metadata_frozen_and_fingerprint(tiny_tipsv2_dir):
    teacher = load_teacher(tiny_tipsv2_dir)
    assert isinstance(teacher, Teacher)
    assert (teacher.width, teacher.patch_size, teacher.image_size, teacher.num_registers) == (32, 8, 32, 1)
    assert teacher.has_text and teacher.tokenizer is not None
    assert abs(teacher.temperature - Tipsv2Model.from_pretrained(tiny_tipsv2_dir).temperature.item()) < 1e-9
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    teacher.train()  # a parent module switching to training must not unfreeze the teacher
    assert not teacher.training
    assert len(teacher.fingerprint) == 64 and teacher.fingerprint == load_teacher(tiny_tipsv2_dir).fingerprint
    # outputs are plain tensors: usable as loss targets in a student's autograd graph
    tokens = teacher.encode_image(torch.rand(1, 3, 32, 32))
    assert not tokens.patches.is_inference() and not tokens.patches.requires_grad
    student = torch.ones_like(tokens.patches, requires_grad=True)
    (student * tokens.patches).sum().backward()


def test_dtype_and_value_trick(tiny_tipsv2_dir):
    teacher = load_teacher(tiny_tipsv2_dir, dtype="bfloat16")
    assert teacher.dtype == torch.bfloat16
    pixels = torch.rand(1, 3, 32, 32)
    plain = teacher.encode_image(pixels)
    dense = teacher.encode_image(pixels, value_trick=True)
    assert plain.patches.dtype == torch.bfloat16 and dense.patches.shape == plain.patches.shape
    assert not torch.equal(plain.patches, dense.patches)
