"""Bad input to the teacher layer: one-line UserErrors naming the bad value and what was expected."""
from __future__ import annotations

import pytest
import torch

from teachers import load_teacher
from common.errors import UserError


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_paths_and_bad_specs(tmp_path, monkeypatch):
    with pytest.raises(UserError) as err:
        load_teacher(tmp_path / "does-not-exist")
    assert "no such file or directory" in _one_line(err)
    with pytest.raises(UserError) as err:
        load_teacher(tmp_path)  # an empty directory
    assert "config.json" in _one_line(err)
    with pytest.raises(UserError) as err:
        load_teacher(f"npz:{tmp_path / 'missing_vision.npz'}")
    assert "no such .npz file" in _one_line(err)
    with pytest.raises(UserError) as err:
        load_teacher("npz:")
    assert "expected 1-2" in _one_line(err)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # no network here; skip the retries
    with pytest.raises(UserError) as err:
        load_teacher("google/tipsv2-g14")
    assert "hub" in _one_line(err)


def test_bad_options(tiny_tipsv2_dir):
    with pytest.raises(UserError) as err:
        load_teacher(tiny_tipsv2_dir, colour="blue")
    assert "colour" in _one_line(err) and "tokenizer" in str(err.value)
    with pytest.raises(UserError) as err:
        load_teacher(tiny_tipsv2_dir, dtype="float8")
    assert "float8" in _one_line(err)


def test_bad_pixels(tiny_tipsv2_dir):
    teacher = load_teacher(tiny_tipsv2_dir)
    with pytest.raises(UserError) as err:
        teacher.encode_image(torch.rand(1, 3, 30, 32))
    assert "30x32 is not a multiple of the patch size 8" in _one_line(err)
    with pytest.raises(UserError) as err:
        teacher.encode_image(torch.rand(1, 3, 32, 32) * 255)
    assert "expected RGB in [0,1]" in _one_line(err)
    with pytest.raises(UserError) as err:
        teacher.encode_image(torch.rand(3, 32, 32))
    assert "(B,3,H,W)" in _one_line(err)
    with pytest.raises(UserError) as err:
        teacher.encode_text("a single string")
    assert "list of strings" in _one_line(err)


def test_text_less_teacher(tiny_tipsv2_dir, tmp_path):
    from transformers import Tipsv2Model

    Tipsv2Model.from_pretrained(tiny_tipsv2_dir).vision_model.save_pretrained(tmp_path)
    teacher = load_teacher(tmp_path)  # a vision-only TIPSv2 directory
    assert not teacher.has_text and teacher.tokenizer is None
    with pytest.raises(UserError) as err:
        teacher.encode_text(["a cat"])
    assert "has no text tower" in _one_line(err)
