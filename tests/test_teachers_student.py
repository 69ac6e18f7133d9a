"""A tipsdistill student checkpoint directory loads as a teacher (its own towers, no heads)."""
from __future__ import annotations

import torch

from students import build_student
from teachers import load_teacher
from teachers.tipsv2_tokens import tipsv2_tokens


def test_student_dir_as_teacher(tmp_path, tiny_tokenizer):
    student = build_student("tipsv2-nano", teacher_width=48, tokenizer=tiny_tokenizer).eval()
    student.save(tmp_path / "student")
    teacher = load_teacher(tmp_path / "student")
    assert (teacher.width, teacher.patch_size) == (student.width, student.patch_size)
    assert teacher.has_text and teacher.temperature is not None
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = tipsv2_tokens(student.vision, pixels)
        batch = tiny_tokenizer(["a red circle"], padding="max_length", max_length=64, truncation=True,
                               return_tensors="pt")
        text = torch.nn.functional.normalize(student.text_features(batch["input_ids"], batch["attention_mask"]), dim=-1)
    assert (teacher.encode_image(pixels).patches - expected.patches).abs().max() <= 1e-5
    assert (teacher.encode_text(["a red circle"]) - text).abs().max() <= 1e-5
