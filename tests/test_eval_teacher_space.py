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


def test_a_student_of_two_teachers_reads_in_each_teachers_space(two_teacher_student, tiny_dinov2_dir, tmp_path):
    from students import load_student

    student = load_student(two_teacher_student).eval()
    dino = load_teacher(str(tiny_dinov2_dir))
    pixels = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        tokens = student.encode_image(pixels)
        for name, heads in (("teacher", None), ("tips", None), ("dino", "dino")):
            model = load_model(f"{two_teacher_student}@{name}")
            assert torch.equal(model.encode_image(pixels).patches, student.project(tokens, heads).patches), name
    assert model.width == dino.width != student.teacher_width and not model.has_text
    report = evaluate({"dino": str(tiny_dinov2_dir), "student": f"{two_teacher_student}@dino"}, "fidelity",
                      "scenes:size=64,length=4", tmp_path / "fid", quiet=True)
    assert -1 <= report["models"]["student"]["patch_cosine"] <= 1
    # The image path of the dino space: the backbone and the dino heads, not the primary's.
    assert report["cost"]["student"]["vision_params"] == sum(
        p.numel() for module in (student.vision, student.teacher_heads["dino"]) for p in module.parameters())
    report = evaluate({"student": f"{two_teacher_student}@dino"}, "linear-seg", "scenes:length=4,size=32",
                      tmp_path / "seg", quiet=True, iterations=3)
    assert 0 <= report["models"]["student"]["miou"] <= 100


def test_a_text_less_teachers_space_refuses_zero_shot_and_names_are_checked(two_teacher_student, tmp_path, capsys):
    import json
    import shutil

    from distill.cli import main

    assert main(["eval", "--model", f"s={two_teacher_student}@dino", "--task", "zeroshot-seg", "--dataset",
                 "scenes:size=32,length=2", "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: model s has no text tower (read in the space of "
                                                         "teacher dino (") and "zero-shot segmentation needs one" in err
    with pytest.raises(UserError, match=r"@third: the student has no teacher 'third'; expected one of teacher, tips, "
                                        r"dino$"):
        load_model(f"{two_teacher_student}@third")
    # A teacher changed since the distillation is refused, as for @teacher.
    changed = tmp_path / "changed"
    shutil.copytree(two_teacher_student, changed)
    manifest = json.loads((changed / "student.json").read_text())
    manifest["metadata"]["teacher"]["teachers"][1]["fingerprint"] = "0" * 64
    (changed / "student.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="expected the same teacher"):
        load_model(f"{changed}@dino")
    # '@' elsewhere parses as before: in a directory name, and a whole spec that is an existing directory.
    moved = tmp_path / "run@2" / "student"
    shutil.copytree(two_teacher_student, moved)
    assert load_model(f"{moved}@dino").width == load_model(f"{two_teacher_student}@dino").width
    assert load_model(str(moved)).width == load_teacher(str(two_teacher_student)).width
    literal = tmp_path / "run@2" / "student@dino"  # beside `moved`, a student checkpoint too
    shutil.copytree(two_teacher_student, literal)
    assert load_model(str(literal)).width == load_teacher(str(two_teacher_student)).width  # the student, not @dino
