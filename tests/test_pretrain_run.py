"""`tipsdistill pretrain`: a few steps on the built-in scenes train, the loss falls, a real TIPSv2 model comes out."""
from __future__ import annotations

import json
import math

import pytest
import torch

from distill.cli import main
from distill.recipe_loader import load_recipe
from distill.run import run_training
from test_engine_train import overriding

# nano backbone at 32 px; 8 scenes = one batch, seen every step, so a working objective must fit it.
# On one repeated batch the DINO/iBOT terms oscillate (collapse onto a prototype, then centering pushes
# out of it), so they get small weights here and the falling loss is the caption-contrastive anchor.
TINY = ["student.name=tipsv2-nano", "student.image_size=32", "data.options={length: 8, size: 32}",
        "batch_size=8", "max_steps=20", "log_every=1", "warmup_steps=0", "lr=5e-4", "pretrain.local_crops=1",
        "pretrain.local_size=16", "pretrain.num_prototypes=32", "pretrain.head_hidden=32",
        "pretrain.head_bottleneck=16", "pretrain.alpha=0.02", "pretrain.beta=0.02"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert main(["pretrain", "--recipe", "micro-teacher", "--out", str(out), *TINY]) == 0
    return out


def test_pretrain_contrastive_loss_falls_and_all_losses_are_logged(pretrained):
    rows = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    assert {"contrastive/cls1", "contrastive/cls2", "pretrain/dino", "pretrain/ibot"} <= set(rows[0])
    assert all(math.isfinite(r[k]) for r in rows for k in r)
    for key in ("contrastive/cls1", "contrastive/cls2"):
        first, last = sum(r[key] for r in rows[:3]) / 3, sum(r[key] for r in rows[-3:]) / 3
        assert last < first, key


def test_output_is_a_tipsv2_model_the_teacher_layer_loads(pretrained):
    from transformers import Tipsv2Model

    from teachers import load_teacher

    model = Tipsv2Model.from_pretrained(pretrained / "model")
    assert model.config.vision_config.hidden_size == 32
    teacher = load_teacher(str(pretrained / "model"))
    assert teacher.has_text and teacher.patch_size == 8
    tokens = teacher.encode_image(torch.rand(2, 3, 32, 32))
    assert tokens.patches.shape == (2, 4, 4, 32)
    assert teacher.encode_text(["a red circle"]).shape == (1, 32)


def test_pretraining_resumes_bitwise_and_checkpoints_hold_a_student(tmp_path):
    """Stopped at step 2 and resumed, a run ends with the weights and losses of an uninterrupted one: the EMA
    heads, prototype centres, masks, caption draws and extra views are all part of the state or keyed."""
    from safetensors.torch import load_file

    args = overriding(TINY, "max_steps=4", "batch_size=4", "pretrain.local_crops=1", "loss.mask_ratio=0.3")
    assert main(["pretrain", "--out", str(tmp_path / "straight"), *args]) == 0
    assert main(["pretrain", "--out", str(tmp_path / "split"), *args, "--stop-at", "2"]) == 0
    assert (tmp_path / "split" / "checkpoints" / "step_00000002" / "student" / "student.json").is_file()
    assert not (tmp_path / "split" / "model").exists()
    assert main(["pretrain", "--out", str(tmp_path / "split"), "--resume"]) == 0  # the recorded recipe
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda run: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "straight") == [
        {**r, "images_per_s": x["images_per_s"]} for r, x in zip(rows(tmp_path / "split"), rows(tmp_path / "straight"))]


@pytest.mark.parametrize("override, message", [
    ("pretrain.ema=half", "pretrain.ema"),
    ("pretrain.nope=1", "pretrain.nope"),
    ("pretrain.alpha=-1", "pretrain.alpha"),
    ("patch_tokens=some", "loss.patch_tokens"),
])
def test_bad_recipe_values_are_one_line_errors(override, message, capsys, tmp_path):
    assert main(["pretrain", "--out", str(tmp_path / "x"), override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_a_teacher_section_or_a_distill_recipe_is_refused(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("teacher: {spec: google/tipsv2-g14}\npretrain: {alpha: 1.0}\n")
    assert main(["pretrain", "--recipe", str(recipe), "--out", str(tmp_path / "x")]) == 2
    assert "no teacher section in a pretraining recipe" in capsys.readouterr().err
    assert main(["pretrain", "--recipe", "micro", "--out", str(tmp_path / "x")]) == 2
    assert "has no pretrain: section" in capsys.readouterr().err
    assert main(["distill", "--recipe", "micro-teacher", "--out", str(tmp_path / "x")]) == 2
    assert "run it with `tipsdistill pretrain`" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_existing_model_is_not_overwritten(pretrained):
    with pytest.raises(Exception, match="already holds"):
        run_training(load_recipe("micro-teacher", TINY), pretrained)
