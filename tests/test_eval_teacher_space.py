"""`STUDENT@teacher`: a student read through its projection heads with the text tower of the teacher it was distilled
from (the default job's narrow student has no text tower of its own)."""
from __future__ import annotations

import pytest
import torch

from distill.eval import evaluate
from distill.eval.models import TEACHER_SPACE, load_model
from students import build_student
from teachers import load_teacher
from common.errors import UserError


def _student(tmp_path, teacher_dir, fingerprint=None, name="student"):
    teacher = load_teacher(str(teacher_dir))
    torch.manual_seed(0)
    student = build_student("tipsv2-nano", teacher_width=teacher.width, text=False, image_size=32)
    out = tmp_path / name
    student.save(out, metadata={"teacher": {"spec": str(teacher_dir),
                                            "fingerprint": fingerprint or teacher.fingerprint}})
    return out


def test_a_student_in_its_teacher_space_encodes_with_its_heads_and_the_teacher_text(tmp_path, tiny_tipsv2_dir):
    model = load_model(f"{_student(tmp_path, tiny_tipsv2_dir)}{TEACHER_SPACE}")
    teacher = load_teacher(str(tiny_tipsv2_dir))
    pixels = torch.rand(2, 3, 32, 32)
    tokens = model.encode_image(pixels, value_trick=True)
    assert tokens.patches.shape[-1] == teacher.width
    with torch.inference_mode():
        expected = model.student.project(model.student.encode_image(pixels, value_trick=True))
    assert torch.equal(tokens.patches, expected.patches)
    assert torch.equal(model.encode_text(["a red circle"]), teacher.encode_text(["a red circle"]))
    report = evaluate({"student": f"{tmp_path / 'student'}{TEACHER_SPACE}"}, "zeroshot-seg",
                      "scenes:size=32,length=4", tmp_path / "eval", quiet=True, overlays=0)
    assert report["models"]["student"]["miou"] is not None
    assert report["cost"]["student"]["text_params"] == sum(p.numel() for p in teacher.text.parameters())


def test_teacher_space_refuses_what_it_cannot_read(tmp_path, tiny_tipsv2_dir):
    with pytest.raises(UserError, match="not a student checkpoint"):
        load_model(f"{tiny_tipsv2_dir}{TEACHER_SPACE}")
    changed = _student(tmp_path, tiny_tipsv2_dir, fingerprint="0" * 64, name="other")
    with pytest.raises(UserError, match="expected the same teacher"):
        load_model(f"{changed}{TEACHER_SPACE}")
    bare = tmp_path / "bare"
    build_student("tipsv2-nano", teacher_width=32, text=False).save(bare)
    with pytest.raises(UserError, match="no recorded teacher"):
        load_model(f"{bare}{TEACHER_SPACE}")


def test_an_onnx_export_with_heads_reads_in_its_teacher_space_like_the_checkpoint(tmp_path, tiny_tipsv2_dir):
    pytest.importorskip("onnxruntime")
    from distill.cli import main

    checkpoint = _student(tmp_path, tiny_tipsv2_dir)
    for name, extra in (("fp32", []), ("int8", ["--quantize", "int8"]), ("bare", [])):
        heads = [] if name == "bare" else ["--with-heads"]
        assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / name),
                     *heads, *extra]) == 0
    models = {"torch": f"{checkpoint}{TEACHER_SPACE}", "onnx": f"onnx:{tmp_path / 'fp32'}{TEACHER_SPACE}",
              "int8": f"onnx:{tmp_path / 'int8'}{TEACHER_SPACE}"}
    report = evaluate(models, "zeroshot-seg", "scenes:size=32,length=4", tmp_path / "eval", quiet=True, overlays=0)
    scores, cost = report["models"], report["cost"]
    assert abs(scores["onnx"]["miou"] - scores["torch"]["miou"]) <= 1e-6
    assert 0 <= scores["int8"]["miou"] <= 100
    # The image path of the PyTorch student, recorded at export: the backbone and its heads.
    assert cost["onnx"]["vision_params"] == cost["torch"]["vision_params"]
    assert cost["onnx"]["gflops_per_image"] is None and cost["onnx"]["peak_memory_mib"] is None
    assert cost["onnx"]["images_per_s"] > 0 and cost["torch"]["gflops_per_image"] > 0
    assert "onnx, int8: FLOPs and memory not counted" in (tmp_path / "eval" / "report.md").read_text()
    with pytest.raises(UserError, match="no projection heads"):
        load_model(f"onnx:{tmp_path / 'bare'}{TEACHER_SPACE}")
    with pytest.raises(UserError, match="exported without --with-heads"):
        load_teacher(f"onnx:{tmp_path / 'bare'}").teacher_space()
