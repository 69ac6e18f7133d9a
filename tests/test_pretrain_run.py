"""`tipsdistill pretrain`: a few steps on the built-in scenes train, the loss falls, a real TIPSv2 model comes out."""
from __future__ import annotations

import json
import math

import pytest
import torch

from distill.cli import main
from distill.pretrain_run import load_pretrain_recipe, run_pretrain

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


def test_switches_build_the_ablation_variants():
    run = load_pretrain_recipe("micro-teacher", ["pretrain.ema=full", "patch_tokens=masked", "pretrain.alpha=0"])
    assert run.pretrain.ema == "full" and run.pretrain.alpha == 0.0
    assert run.recipe.loss.patch_tokens == "masked"


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


def test_a_teacher_section_is_refused(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("teacher: {spec: google/tipsv2-g14}\n")
    assert main(["pretrain", "--recipe", str(recipe), "--out", str(tmp_path / "x")]) == 2
    assert "no 'teacher' section" in capsys.readouterr().err


def test_existing_model_is_not_overwritten(pretrained):
    with pytest.raises(Exception, match="already holds"):
        run_pretrain(load_pretrain_recipe("micro-teacher", TINY), pretrained)
