"""The student zoo: official TIPSv2 shapes (counted on the meta device) and the registry."""
from __future__ import annotations

import pytest
import torch

import students
from students.zoo import StudentArch, _small
from common.errors import UserError


def _millions(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


# REFERENCE.md: vision with the 448 px position embedding, text with the 32k vocabulary.
@pytest.mark.parametrize("name, vision, text", [
    ("tipsv2-b14", 86.3, 109.6),
    ("tipsv2-l14", 304.0, 183.9),
    ("tipsv2-so400m14", 413.4, 448.3),
])
def test_official_sizes_have_the_released_parameter_counts(name, vision, text):
    with torch.device("meta"):
        student = students.build_student(name)
    assert round(_millions(student.vision), 1) == vision
    assert round(_millions(student.text), 1) == text
    assert student.patch_size == 14 and student.image_size == 448 and student.num_registers == 1


def test_so400m_mlp_hidden_is_4304():
    with torch.device("meta"):
        student = students.build_student("tipsv2-so400m14", text=False)
    assert student.vision.encoder.layer[0].mlp.fc1.out_features == 4304


def test_small_sizes_and_overrides():
    with torch.device("meta"):
        s14 = students.build_student("tipsv2-s14")
        micro = students.build_student("tipsv2-micro", vocab_size=128, image_size=32, teacher_width=1536)
    assert (s14.width, s14.vision.config.num_hidden_layers, s14.vision.config.num_attention_heads) == (384, 12, 6)
    assert (s14.text.config.hidden_size, s14.text.config.num_attention_heads) == (384, 6)
    assert (micro.width, micro.patch_size, micro.image_size) == (96, 8, 32)
    assert micro.text.config.vocab_size == 128 and micro.teacher_width == 1536
    assert _millions(micro.vision) < 1


def test_unknown_name_and_bad_image_size_are_user_errors():
    with pytest.raises(UserError, match="tipsv2-micro"):
        students.build_student("tipsv2-xxl")
    with pytest.raises(UserError, match="multiple of"):
        students.build_student("tipsv2-micro", image_size=60)


def test_adding_a_size_is_one_entry():
    arch = students.register_student(StudentArch("tipsv2-test-pico", _small(16, 1, 2, 8, 16),
                                                 "vit_base_patch14_reg1_tipsv2", "test"))
    try:
        student = students.build_student(arch.name, text=False)
        assert student.width == 16 and student.text is None
    finally:
        del students.STUDENTS[arch.name]
