"""Student behaviour: tokens, heads, text, save/load (atomic, guarded) and initialisation from checkpoints."""
from __future__ import annotations

import json

import pytest
import torch

import students
from students.checkpoint import MANIFEST, WEIGHTS
from common.errors import UserError
from teachers.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def micro(tiny_tokenizer):
    torch.manual_seed(0)
    return students.build_student("tipsv2-micro", teacher_width=48, tokenizer=tiny_tokenizer).eval()


def _text(tokenizer, texts=("a red circle", "a photo of many dogs")):
    return tokenizer(list(texts), padding="max_length", max_length=16, truncation=True, return_tensors="pt")


def test_tokens_heads_and_text(micro, tiny_tokenizer):
    pixels = torch.rand(2, 3, 64, 64)
    tokens = micro.image_tokens(pixels)
    assert tokens.cls.shape == (2, 96) and tokens.registers.shape == (2, 1, 96) and tokens.grid == (8, 8)
    projected = micro.project(tokens)
    assert projected.patches.shape == (2, 8, 8, 48) and projected.registers.shape == (2, 1, 48)
    projected.patches.sum().backward()
    assert micro.vision.embeddings.patch_embeddings.projection.weight.grad is not None
    batch = _text(tiny_tokenizer)
    assert micro.text_features(batch["input_ids"], batch["attention_mask"]).shape == (2, 96)
    assert micro.text.config.vocab_size == len(tiny_tokenizer)
    assert isinstance(micro.temperature, torch.nn.Parameter) and micro.temperature.requires_grad
    masked = torch.zeros(2, 64, dtype=torch.bool)
    masked[:, :10] = True
    assert not torch.equal(micro.image_tokens(pixels, bool_masked_pos=masked).patches, tokens.patches)


def test_heads_kinds_and_missing_heads():
    with torch.device("meta"):
        mlp = students.build_student("tipsv2-nano", teacher_width=64, head="mlp", text=False)
    assert mlp.head_kind == "mlp" and mlp.text is None and mlp.temperature is None
    same = students.build_student("tipsv2-nano", teacher_width=32, text=False)
    tokens = same.image_tokens(torch.rand(1, 3, 32, 32))
    assert torch.equal(same.project(tokens).patches, tokens.patches)  # equal widths: heads start as identity
    with pytest.raises(UserError, match="head kind"):
        students.build_student("tipsv2-nano", teacher_width=64, head="conv", text=False)
    bare = students.build_student("tipsv2-nano", text=False)
    with pytest.raises(UserError, match="no projection heads"):
        bare.project(tokens)
    with pytest.raises(UserError, match="without a text tower"):
        bare.text_features(torch.zeros(1, 4, dtype=torch.long))


def test_gradient_checkpointing_trains():
    student = students.build_student("tipsv2-nano", gradient_checkpointing=True, vocab_size=64).train()
    assert student.vision.encoder.layer[0].gradient_checkpointing
    assert student.text.encoder.layers[0].gradient_checkpointing
    student.image_tokens(torch.rand(2, 3, 32, 32)).patches.square().mean().backward()
    assert student.vision.encoder.layer[0].attention.q_proj.weight.grad is not None


def test_save_load_round_trip(micro, tiny_tokenizer, tmp_path):
    out = tmp_path / "ckpt"
    micro.save(out, metadata={"teacher_fingerprint": "f00d", "recipe": {"steps": 3}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dir left behind
    loaded = students.load_student(out).eval()
    pixels = torch.rand(2, 3, 64, 64)
    batch = _text(tiny_tokenizer)
    with torch.no_grad():
        a, b = micro.project(micro.image_tokens(pixels)), loaded.project(loaded.image_tokens(pixels))
        assert torch.equal(a.patches, b.patches) and torch.equal(a.cls, b.cls)
        assert torch.equal(micro.text_features(batch["input_ids"], batch["attention_mask"]),
                           loaded.text_features(batch["input_ids"], batch["attention_mask"]))
    assert loaded.name == "tipsv2-micro" and loaded.teacher_width == 48 and loaded.head_kind == "linear"
    assert loaded.metadata["teacher_fingerprint"] == "f00d"
    assert loaded.tokenizer("a red circle")["input_ids"] == tiny_tokenizer("a red circle")["input_ids"]
    micro.save(out)  # a checkpoint may replace an earlier one at the same path
    resumed = students.build_student("tipsv2-micro", init=str(out), teacher_width=48)  # a student dir is a spec
    assert torch.equal(resumed.vision.embeddings.position_embeddings, micro.vision.embeddings.position_embeddings)
    assert resumed.tokenizer is not None and resumed.text.config.vocab_size == len(tiny_tokenizer)
    assert students.build_student("tipsv2-micro", init=str(out), tokenizer=tiny_tokenizer).tokenizer is not None
    other = build_tokenizer(["completely different words here"], vocab_size=40)
    with pytest.raises(UserError, match="another vocabulary"):
        students.build_student("tipsv2-micro", init=str(out), tokenizer=other)


def test_save_never_clobbers_other_data(micro, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a student checkpoint"):
        micro.save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_load_rejects_truncated_and_foreign_weights(micro, tmp_path):
    out = tmp_path / "ckpt"
    micro.save(out)
    data = (out / WEIGHTS).read_bytes()
    (out / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable safetensors"):
        students.load_student(out)
    other = tmp_path / "nano"
    students.build_student("tipsv2-nano", vocab_size=64).save(other)
    (out / WEIGHTS).write_bytes((other / WEIGHTS).read_bytes())
    with pytest.raises(UserError, match="does not match the architecture"):
        students.load_student(out)
    with pytest.raises(UserError, match="not a student checkpoint"):
        students.load_student(tmp_path)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["name"] == "tipsv2-micro"


def test_init_from_a_tipsv2_checkpoint(tiny_tipsv2_dir, tiny_tokenizer):
    from teachers import load_teacher

    teacher = load_teacher(str(tiny_tipsv2_dir))
    student = students.build_student("tipsv2-nano", init=str(tiny_tipsv2_dir), teacher_width=teacher.width)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(student.image_tokens(pixels).patches, teacher.encode_image(pixels).patches)
        batch = _text(tiny_tokenizer)
        ours = torch.nn.functional.normalize(student.text_features(batch["input_ids"], batch["attention_mask"]), dim=-1)
    assert torch.allclose(ours, teacher.encode_text(["a red circle", "a photo of many dogs"]), atol=1e-6)
    assert student.tokenizer is not None and float(student.temperature.detach()) == pytest.approx(teacher.temperature)
    assert student.metadata["init"]["fingerprint"] == teacher.fingerprint
    with pytest.raises(UserError, match="init checkpoint .* tipsv2-micro vision tower"):
        students.build_student("tipsv2-micro", init=str(tiny_tipsv2_dir))


def test_text_init_only_at_equal_width(tiny_tipsv2_dir):
    from teachers import load_teacher

    teacher = load_teacher(str(tiny_tipsv2_dir))
    student = students.build_student("tipsv2-nano", text_init=str(tiny_tipsv2_dir))
    for (name, ours), theirs in zip(student.text.state_dict().items(), teacher.text.state_dict().values()):
        assert torch.equal(ours, theirs), name
    assert student.metadata["text_init"]["fingerprint"] == teacher.fingerprint
    with pytest.raises(UserError, match="equal width"):
        students.build_student("tipsv2-micro", text_init=str(tiny_tipsv2_dir))
