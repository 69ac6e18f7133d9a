"""`tipsdistill export --format onnx`: onnxruntime graphs give the student's tokens, int8 stays close, and
`onnx:DIR` evaluates like any other model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import students
from conftest import perturbed_student
from distill.cli import main
from teachers import load_teacher

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TEXTS = ["a red circle", "a photo of many dogs", ""]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    student = perturbed_student(tiny_tokenizer)
    path = tmp_path_factory.mktemp("onnx") / "ckpt"
    student.save(path)
    return path


def _export(checkpoint, out, *extra):
    return main(["export", str(checkpoint), "--format", "onnx", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def exports(checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    assert _export(checkpoint, root / "fp32", "--with-heads") == 0
    assert _export(checkpoint, root / "int8", "--quantize", "int8") == 0
    return root / "fp32", root / "int8"


def _sequence(tokens):
    return torch.cat([tokens.cls[:, None], tokens.registers, tokens.patches.flatten(1, 2)], dim=1)


@pytest.mark.parametrize("batch, size", [(1, (64, 64)), (4, (64, 64)), (2, (96, 48))])
def test_onnx_tokens_equal_pytorch_at_batch_sizes_and_resolutions(checkpoint, exports, batch, size):
    student = students.load_student(checkpoint).eval()
    model = load_teacher(f"onnx:{exports[0]}")
    pixels = torch.rand(batch, 3, *size)
    for value_trick in (False, True):
        want = student.encode_image(pixels, value_trick=value_trick)
        got = model.encode_image(pixels, value_trick=value_trick)
        assert got.patches.shape == want.patches.shape
        assert (_sequence(got) - _sequence(want)).abs().max() <= 1e-4
    assert (model.encode_text(TEXTS) - student.encode_text(TEXTS)).abs().max() <= 1e-5
    assert model.temperature == pytest.approx(float(student.temperature.detach()))
    assert (model.image_size, model.patch_size, model.width, model.num_registers) == (64, 8, 96, 1)


def test_export_writes_graphs_config_heads_and_parity_notes(exports, capsys):
    import onnxruntime as ort

    fp32, int8 = exports
    names = {p.name for p in fp32.iterdir()}
    assert {"vision.onnx", "vision_value.onnx", "text.onnx", "onnx_config.json", "tokenizer.json", "README.md",
            "teacher_space_heads.safetensors"} <= names
    config = json.loads((fp32 / "onnx_config.json").read_text())
    assert config["quantization"] is None and config["teacher_width"] == 48 and config["opset"] == 18
    assert any("vision.onnx: max abs diff" in note for note in config["parity"])
    outputs = [o.name for o in ort.InferenceSession(str(fp32 / "vision.onnx")).get_outputs()]
    assert outputs == ["cls", "registers", "patches", "teacher_cls", "teacher_registers", "teacher_patches"]
    assert json.loads((int8 / "onnx_config.json").read_text())["quantization"] == "int8"
    assert (int8 / "vision.onnx").stat().st_size < (fp32 / "vision.onnx").stat().st_size / 2


def test_int8_tokens_are_close_and_fingerprints_differ(exports):
    fp32, int8 = (load_teacher(f"onnx:{path}") for path in exports)
    pixels = torch.rand(2, 3, 64, 64)
    a, b = fp32.encode_image(pixels).patches, int8.encode_image(pixels).patches
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).mean() > 0.99
    assert fp32.fingerprint != int8.fingerprint


def test_onnx_model_runs_zero_shot_segmentation(exports, checkpoint, tmp_path):
    from distill.eval import evaluate

    scenes = "scenes:size=32,length=4"
    report = evaluate({"onnx": f"onnx:{exports[0]}", "torch": str(checkpoint)}, "zeroshot-seg", scenes,
                      tmp_path / "out", quiet=True)
    onnx, reference = report["models"]["onnx"], report["models"]["torch"]
    assert np.isclose(onnx["miou"], reference["miou"], atol=1e-6)
    int8 = evaluate({"int8": f"onnx:{exports[1]}"}, "zeroshot-seg", scenes, tmp_path / "int8", quiet=True)
    assert 0 <= int8["models"]["int8"]["miou"] <= 100


def test_quantize_needs_the_onnx_format(checkpoint, tmp_path, capsys):
    assert main(["export", str(checkpoint), "--format", "hf", "--out", str(tmp_path / "hf"),
                 "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --quantize int8 with --format hf") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "hf").exists()


def test_onnx_dir_without_vision_graph_fails_cleanly(exports, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(exports[0], broken)
    (broken / "vision.onnx").unlink()
    assert main(["eval", "--model", f"m=onnx:{broken}", "--task", "zeroshot-seg", "--dataset",
                 "scenes:size=32,length=2", "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "has no vision.onnx" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(Exception, match="no such directory"):
        load_teacher(f"onnx:{tmp_path / 'missing'}")


def test_parity_failure_writes_nothing(checkpoint, tmp_path, monkeypatch, capsys):
    import students.onnx_export

    monkeypatch.setattr(students.onnx_export, "PARITY_TOLERANCE", 0.0)
    assert _export(checkpoint, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "vision.onnx: onnxruntime differs from PyTorch" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_vision_only_student_exports_without_text_graph(tmp_path, capsys):
    students.build_student("tipsv2-nano", text=False).save(tmp_path / "ckpt")
    assert _export(tmp_path / "ckpt", tmp_path / "out") == 0
    assert "no text.onnx" in capsys.readouterr().out
    assert not (tmp_path / "out" / "text.onnx").exists()
    model = load_teacher(f"onnx:{tmp_path / 'out'}")
    assert not model.has_text and model.encode_image(torch.rand(2, 3, 32, 32)).patches.shape == (2, 4, 4, 32)


def test_missing_onnxruntime_is_a_one_line_error(checkpoint, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` then raises ImportError
    assert _export(checkpoint, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "tipsdistill[onnx]" in err and "onnxruntime is missing" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no output, no temp left beside it


def test_onnx_export_gives_every_teachers_heads(two_teacher_student, tmp_path):
    import onnxruntime as ort

    from common.errors import UserError
    from distill.eval.models import load_model

    assert _export(two_teacher_student, tmp_path / "out", "--with-heads") == 0
    outputs = [o.name for o in ort.InferenceSession(str(tmp_path / "out" / "vision.onnx")).get_outputs()]
    assert outputs == ["cls", "registers", "patches", "teacher_cls", "teacher_registers", "teacher_patches",
                       "dino_cls", "dino_registers", "dino_patches"]
    student = students.load_student(two_teacher_student).eval()
    config = json.loads((tmp_path / "out" / "onnx_config.json").read_text())
    dino = student.teacher_heads["dino"]
    assert config["teacher_heads"] == {"dino": {"teacher_width": dino.teacher_width, "outputs": outputs[-3:],
                                                "head_params": sum(p.numel() for p in dino.parameters())}}
    assert config["teacher"] == student.metadata["teacher"]  # every teacher's spec and fingerprint
    model = load_teacher(f"onnx:{tmp_path / 'out'}")
    pixels = torch.rand(2, 3, 64, 48)
    for heads in (None, "dino"):
        got, want = model.teacher_space(heads).encode_image(pixels), student.teacher_space(heads).encode_image(pixels)
        assert got.patches.shape == want.patches.shape and (_sequence(got) - _sequence(want)).abs().max() <= 1e-4
    with pytest.raises(UserError, match="has no heads for teacher 'third'; expected one of dino$"):
        model.teacher_space("third")
    # `onnx:DIR@dino`: the dino heads' outputs, the teacher checked by the fingerprint the config records.
    space = load_model(f"onnx:{tmp_path / 'out'}@dino")
    assert (space.width, space.has_text) == (dino.teacher_width, False)
    assert torch.equal(space.encode_image(pixels).patches, model.teacher_space("dino").encode_image(pixels).patches)
    with pytest.raises(UserError, match="no teacher 'third'; expected one of teacher, tips, dino$"):
        load_model(f"onnx:{tmp_path / 'out'}@third")
