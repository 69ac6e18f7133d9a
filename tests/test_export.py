"""`tipsdistill export`: each format reloads with the user's library and gives the student's outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import students
from conftest import perturbed_student
from distill.cli import main
from students.checkpoint import WEIGHTS
from students.export import (
    HEADS_MANIFEST, NPZ_TEXT, NPZ_VISION, TIMM_MANIFEST, TIMM_WEIGHTS, heads_files, load_heads,
)

TEXTS = ["a red circle", "a photo of many dogs"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    student = perturbed_student(tiny_tokenizer)
    root = tmp_path_factory.mktemp("export")
    student.save(root / "ckpt", metadata={"teacher_fingerprint": "f00dcafe", "recipe": {"loss": "cosine"}})
    report = {"task": "zeroshot-seg", "dataset": "scenes",
              "models": {"student": {"miou": 12.5}, "teacher": {"miou": 10.0}}}
    (root / "report.json").write_text(json.dumps(report))
    return root / "ckpt"


@pytest.fixture(scope="module")
def reference(checkpoint):
    student = students.load_student(checkpoint).eval()
    pixels = torch.rand(2, 3, 64, 64)
    batch = student.tokenizer(TEXTS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    with torch.no_grad():
        tokens = student.image_tokens(pixels)
        sequence = torch.cat([tokens.cls[:, None], tokens.registers, tokens.patches.flatten(1, 2)], dim=1)
        text = student.text_features(batch["input_ids"], batch["attention_mask"])
    return student, pixels, sequence, text


def _export(checkpoint, fmt, out, *extra):
    return main(["export", str(checkpoint), "--format", fmt, "--out", str(out), *extra])


def test_hf_export_loads_with_automodel_and_autoprocessor(checkpoint, reference, tmp_path):
    from transformers import AutoModel, AutoProcessor, AutoTokenizer, Tipsv2Model

    student, pixels, sequence, text = reference
    assert _export(checkpoint, "hf", tmp_path / "hf") == 0
    model = AutoModel.from_pretrained(tmp_path / "hf").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    assert isinstance(model, Tipsv2Model)
    assert type(processor).__name__ == "Tipsv2Processor"
    assert type(processor.image_processor).__name__ == "Tipsv2ImageProcessor"
    inputs = processor(text=TEXTS, return_tensors="pt")
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")(TEXTS)["input_ids"] == student.tokenizer(TEXTS)["input_ids"]
    with torch.no_grad():
        out = model(pixel_values=pixels, **inputs)
    assert (out.vision_model_output.last_hidden_state - sequence).abs().max() <= 1e-5
    assert (out.text_model_output.pooler_output - text).abs().max() <= 1e-5
    assert float(model.temperature.detach()) == pytest.approx(float(student.temperature.detach()))
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "f00dcafe" in card and "cosine" in card and "| miou | **12.50** | 10.00 |" in card


def test_hf_export_of_a_vision_only_student(tmp_path, capsys):
    from transformers import AutoModel, Tipsv2VisionModel

    student = students.build_student("tipsv2-nano", text=False).eval()
    student.save(tmp_path / "ckpt")
    assert _export(tmp_path / "ckpt", "hf", tmp_path / "hf") == 0
    assert "no text tower" in capsys.readouterr().out
    model = AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert isinstance(model, Tipsv2VisionModel)
    pixels = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert (model(pixel_values=pixels).last_hidden_state[:, 2:]
                - student.image_tokens(pixels).patches.flatten(1, 2)).abs().max() <= 1e-5


def test_timm_export_loads_with_create_model(checkpoint, reference, tmp_path):
    import timm
    from PIL import Image

    student, pixels, sequence, _ = reference
    assert _export(checkpoint, "timm", tmp_path / "timm") == 0
    cfg = json.loads((tmp_path / "timm" / TIMM_MANIFEST).read_text())
    model = timm.create_model(cfg["model_name"], pretrained=False, pretrained_cfg_overlay=cfg["pretrained_cfg"],
                              checkpoint_path=str(tmp_path / "timm" / TIMM_WEIGHTS), **cfg["kwargs"]).eval()
    with torch.no_grad():
        assert (model.forward_features(pixels) - sequence).abs().max() <= 1e-5
    # timm's own pipeline: the data config is the student's (64 px, [0,1] RGB as is), not the released 448 px
    data = timm.data.resolve_data_config(model=model)
    assert [tuple(data[key]) for key in ("input_size", "mean", "std")] == [(3, 64, 64), (0, 0, 0), (1, 1, 1)]
    assert model.pretrained_cfg["tag"] == "tipsdistill-tipsv2-micro" and not model.pretrained_cfg.get("hf_hub_id")
    image = Image.fromarray((torch.rand(80, 96, 3) * 255).byte().numpy())
    batch = timm.data.create_transform(**data)(image)[None]
    assert batch.shape == (1, 3, 64, 64) and 0 <= batch.min() and batch.max() <= 1
    with torch.no_grad():
        tokens = student.image_tokens(batch)
        assert (model.forward_features(batch)[:, 2:] - tokens.patches.flatten(1, 2)).abs().max() <= 1e-5


def test_timm_export_folder_is_a_model_spec(checkpoint, reference, tmp_path, capsys):
    from teachers import load_teacher

    student, pixels, sequence, _ = reference
    assert _export(checkpoint, "timm", tmp_path / "timm") == 0
    teacher = load_teacher(tmp_path / "timm")  # no architecture keywords: timm_config.json holds them
    tokens = teacher.encode_image(pixels)
    with torch.no_grad():
        assert (tokens.cls - sequence[:, 0]).abs().max() <= 1e-5
        assert (tokens.patches.flatten(1, 2) - sequence[:, 2:]).abs().max() <= 1e-5
    assert teacher.image_size == 64
    assert teacher.mean.flatten().tolist() == [0.0] * 3 and teacher.std.flatten().tolist() == [1.0] * 3
    capsys.readouterr()
    assert main(["eval", "--model", f"a={tmp_path / 'timm'}", "--model", f"b={tmp_path / 'timm'}", "--task", "fidelity",
                 "--dataset", "scenes", "--limit", "4", "--out", str(tmp_path / "eval")]) == 0
    (tmp_path / "timm" / TIMM_MANIFEST).write_text("{}")
    capsys.readouterr()
    assert main(["eval", "--model", f"a={tmp_path / 'timm'}", "--model", f"b={tmp_path / 'timm'}", "--task", "fidelity",
                 "--dataset", "scenes", "--out", str(tmp_path / "eval2")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {tmp_path / 'timm' / TIMM_MANIFEST}: not a timm export")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_model_card_reads_transparent_images_as_training_did(checkpoint, tmp_path, mode):
    import numpy as np
    from PIL import Image

    from distill.data.clean import to_rgb
    from students.model_card import RGB_AS_TRAINED

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3], rgba[:4, ..., 3] = 200, 255  # the bottom half transparent black
    image = Image.fromarray(rgba)
    if mode == "P":  # a palette image whose colour 0 is transparent
        image = Image.fromarray(rgba[..., 3] // 255).convert("P")
        image.info["transparency"] = 0
    else:
        image = image.convert(mode)
    image.save(tmp_path / "x.png")
    namespace = {}
    exec(RGB_AS_TRAINED, namespace)
    card_read = np.asarray(namespace["load_image"](tmp_path / "x.png"))
    assert (card_read == np.asarray(to_rgb(Image.open(tmp_path / "x.png")))).all()
    assert (card_read[4:] == 255).all()  # white, where a plain convert("RGB") gives black
    assert _export(checkpoint, "timm", tmp_path / "timm") == 0
    assert RGB_AS_TRAINED in (tmp_path / "timm" / "README.md").read_text()


@pytest.mark.parametrize("name", ["tipsv2-b14", "tipsv2-l14", "tipsv2-so400m14"])
def test_timm_kwargs_of_released_sizes_are_timms_defaults(name):
    import timm

    from students.export import timm_kwargs

    with torch.device("meta"):
        student = students.build_student(name, text=False)
        arch = students.get_arch(name)
        plain = timm.create_model(arch.timm_model)
        ours = timm.create_model(arch.timm_model, **timm_kwargs(student))
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}


def test_npz_export_reads_back_through_the_teacher_layer(checkpoint, reference, tmp_path):
    from teachers import load_teacher
    from teachers.official_npz import read_npz, tipsv2_from_official

    student, pixels, sequence, text = reference
    out = tmp_path / "npz"
    assert _export(checkpoint, "npz", out) == 0
    heads = json.loads((out / "tips_npz.json").read_text())
    teacher = load_teacher(str(out))  # the directory alone: both towers, recorded head counts, tokenizer
    tokens = teacher.encode_image(pixels)
    assert (tokens.patches.flatten(1, 2) - sequence[:, 2:]).abs().max() <= 1e-5
    assert (tokens.cls - sequence[:, 0]).abs().max() <= 1e-5
    assert (teacher.encode_text(TEXTS) - torch.nn.functional.normalize(text, dim=-1)).abs().max() <= 1e-5
    _, state, temperature = tipsv2_from_official(read_npz(out / NPZ_VISION), read_npz(out / NPZ_TEXT),
                                                 **heads)
    ours = student.tipsv2_state_dict()
    assert state.keys() == ours.keys()
    assert all(torch.equal(state[k], ours[k].float()) for k in ours)
    assert temperature == pytest.approx(float(student.temperature.detach()))


def test_with_heads_stores_the_teacher_space_heads(checkpoint, reference, tmp_path):
    student, pixels, _, _ = reference
    assert _export(checkpoint, "timm", tmp_path / "timm", "--with-heads") == 0
    assert json.loads((tmp_path / "timm" / HEADS_MANIFEST).read_text())["teacher_width"] == 48
    heads = load_heads(tmp_path / "timm")
    with torch.no_grad():
        tokens = student.image_tokens(pixels)
        assert torch.equal(heads(tokens).patches, student.project(tokens).patches)


@pytest.mark.parametrize("fmt", ["hf", "timm", "npz"])
def test_with_heads_stores_every_teachers_heads(two_teacher_student, fmt, tmp_path):
    student = students.load_student(two_teacher_student).eval()
    teachers = {t["name"]: t for t in student.metadata["teacher"]["teachers"]}
    assert _export(two_teacher_student, fmt, tmp_path / fmt, "--with-heads") == 0
    assert {*heads_files(), *heads_files("dino")} <= {p.name for p in (tmp_path / fmt).iterdir()}
    assert heads_files("dino") == ("teacher_space_heads.dino.safetensors", "teacher_space_heads.dino.json")
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        tokens = student.image_tokens(pixels)
        for name, heads in (("tips", None), ("dino", "dino")):
            manifest = json.loads((tmp_path / fmt / heads_files(heads)[1]).read_text())
            assert manifest["teacher"] == teachers[name]  # name, spec and fingerprint of the teacher it maps to
            assert manifest["teacher_width"] == student.projection_heads(heads).teacher_width
            exported = load_heads(tmp_path / fmt, heads)(tokens)
            assert torch.equal(exported.patches, student.project(tokens, heads).patches)
            assert torch.equal(exported.cls, student.project(tokens, heads).cls)
    card = (tmp_path / fmt / "README.md").read_text()
    assert "## Teachers" in card and "- `tips` (primary: the caption term's side): `micro` with fingerprint" in card
    assert f"- `dino`: A local checkpoint `{Path(teachers['dino']['spec']).name}`" in card
    assert teachers["dino"]["spec"] not in card  # no local absolute path in a shared card


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_truncated_or_foreign_checkpoint_fails_cleanly(checkpoint, tiny_tipsv2_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    data = (broken / WEIGHTS).read_bytes()
    (broken / WEIGHTS).write_bytes(data[: len(data) // 3])
    for fmt in ("hf", "timm", "npz"):
        assert _export(broken, fmt, tmp_path / f"out-{fmt}") == 2
        assert not (tmp_path / f"out-{fmt}").exists()
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "safetensors" in err and len(err.strip().splitlines()) == 3

    students.build_student("tipsv2-nano", vocab_size=64).save(tmp_path / "nano")
    shutil.copy(tmp_path / "nano" / WEIGHTS, broken / WEIGHTS)
    assert _export(broken, "hf", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "does not match the architecture" in err and len(err.strip().splitlines()) == 1
    assert _export(tiny_tipsv2_dir, "npz", tmp_path / "out") == 2  # a transformers dir, not a student
    assert "not a student checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_explicit_report_must_be_an_eval_report(checkpoint, tmp_path, capsys):
    bad = tmp_path / "notes.json"
    bad.write_text("{}")
    assert _export(checkpoint, "timm", tmp_path / "out", "--report", str(bad)) == 2
    assert "not a `tipsdistill eval` report" in capsys.readouterr().err and not (tmp_path / "out").exists()
    good = tmp_path / "retrieval.json"
    good.write_text(json.dumps({"task": "retrieval", "dataset": "scenes", "models": {"student": {"i2t@1": 0.75}}}))
    assert _export(checkpoint, "timm", tmp_path / "out", "--report", str(good)) == 0
    assert "### retrieval on scenes" in (tmp_path / "out" / "README.md").read_text()


def test_existing_output_is_kept_unless_overwrite(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert _export(checkpoint, "timm", out) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep"
    assert _export(checkpoint, "timm", out, "--overwrite") == 0
    assert not (out / "mine.txt").exists() and (out / TIMM_WEIGHTS).is_file()
    assert _leftovers(tmp_path) == []


def test_the_model_card_shows_no_local_absolute_path(tiny_tokenizer, tmp_path):
    """The recorded recipe names the trainer's paths (teacher, data, init); the shared card keeps their last part."""
    student = students.build_student("tipsv2-nano", text=False)
    recipe = {"teacher": {"spec": str(tmp_path / "teachers" / "g14")}, "data": {"source": f"folder:{tmp_path}/photos"},
              "cache": "s3://bucket/cache", "teachers": [{"name": "dino", "spec": "facebook/dinov2-large"}]}
    student.save(tmp_path / "ckpt", metadata={"recipe": recipe})
    assert _export(tmp_path / "ckpt", "timm", tmp_path / "out") == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert str(tmp_path) not in card
    assert "spec: '.../g14'" in card and "source: folder:.../photos" in card
    assert "s3://bucket/cache" in card and "facebook/dinov2-large" in card  # URLs and hub ids as they are
