"""Recipes: packaged files load, validation names the bad key, overrides coerce, the compute estimate."""
from __future__ import annotations

import pytest

from distill.compute import (
    cache_storage, cache_basis_bytes, cache_bytes_per_image, estimate_compute, memory_per_gpu, tower_params,
    trained_params,
)
from distill.recipe_loader import RECIPES_DIR, apply_overrides, load_recipe
from common.errors import UserError

REAL = ("b14", "l14", "so400m14")
RECIPES = [p.stem for p in sorted(RECIPES_DIR.glob("*.yaml"))]


@pytest.mark.parametrize("name", RECIPES)
def test_packaged_recipes_load(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert load_recipe(RECIPES_DIR / f"{name}.yaml") == recipe


@pytest.mark.parametrize("name", REAL)
def test_real_recipes_describe_the_g14_runs(name):
    recipe = load_recipe(name)
    assert recipe.teacher.spec == "google/tipsv2-g14" and recipe.student.name == f"tipsv2-{name}"
    assert recipe.train.mixed_precision == "bf16" and recipe.loss.mask_ratio > 0
    assert recipe.loss.contrastive.kind == ("sigmoid" if name == "so400m14" else "infonce")


# The estimate pinned, so a change of the formula is seen (docs/training.md's recipe table quotes it): (teacher, student,
# train) GFLOPs per image, H100 GPU-hours / 100M samples.
PINNED_COMPUTE = {"b14": (799.5, 64.05, 1058, 74.27), "l14": (799.5, 219.9, 1576, 110.7),
                  "so400m14": (799.5, 297.4, 2011, 141.2), "b14-multi": (1018, 64.58, 1278, 89.75)}


@pytest.mark.parametrize("name", PINNED_COMPUTE)
def test_the_quoted_compute_matches_the_formula(name):
    estimate = estimate_compute(load_recipe(name))
    assert (estimate.teacher_gflops_per_image, estimate.student_gflops_per_image, estimate.train_gflops_per_image,
            estimate.gpu_hours_per_100m_samples) == pytest.approx(PINNED_COMPUTE[name], rel=1e-3)


def test_the_multi_teacher_recipe_counts_every_teacher():
    """b14-multi is b14 plus a DINOv2-L/14 beside the g/14: its estimate adds that teacher's forward at the same
    views (224 px, the last 10% at 448), the student's heads to its width, and its vision tower's memory."""
    from distill.compute import vision_flops
    from teachers.tipsv2_sizes import tipsv2_config

    multi, single = load_recipe("b14-multi"), load_recipe("b14")
    assert [(t.name, t.spec, t.tokens, multi.target_norm(t)) for t in multi.run_teachers] == [
        ("tips", "google/tipsv2-g14", ["cls", "registers", "patches"], "phi-s"),
        ("dinov2", "facebook/dinov2-with-registers-large", ["cls", "patches"], "phi-s")]
    assert multi.view_sizes(0) == single.view_sizes(0) == (224, 224) and multi.view_sizes(90000) == (448, 448)
    a, b = estimate_compute(multi), estimate_compute(single)
    dinov2 = tipsv2_config("l14").vision_config
    forward = 0.9 * vision_flops(dinov2, 224) + 0.1 * vision_flops(dinov2, 448)
    heads = 2 * 768 * 1024 * (0.9 * (2 + 16**2) + 0.1 * (2 + 32**2))  # CLS1, CLS2 and patches to width 1024
    assert a.teacher_gflops_per_image * 1e9 == pytest.approx(b.teacher_gflops_per_image * 1e9 + forward)
    assert a.student_gflops_per_image * 1e9 == pytest.approx(b.student_gflops_per_image * 1e9 + heads)
    assert a.train_gflops_per_image * 1e9 == pytest.approx(b.train_gflops_per_image * 1e9 + forward + 3 * heads)
    # Its cache holds both teachers' targets, each at its input size (the DINOv2 at the view: 224, then 448 px).
    assert cache_storage(multi)["448"]["int8"] == pytest.approx(
        (cache_bytes_per_image("g14", 448, compression="int8") + cache_bytes_per_image("l14", 448, compression="int8"))
        / 1e6)
    g14 = cache_bytes_per_image("g14", 448, compression="int8")
    assert cache_storage(single)["448"]["int8"] == pytest.approx(g14 / 1e6)
    m, n = memory_per_gpu(multi, 8), memory_per_gpu(single, 8)
    assert m.teacher_params - n.teacher_params == tower_params("l14")[0]
    assert m.student_params - n.student_params == 3 * (768 * 1024 + 1024)  # three linear heads
    with pytest.raises(UserError, match=r"'compute.teacher_archs' is \{\}; expected the shape of each teacher after "
                                        r"the first, by name \(dinov2\)"):
        load_recipe("b14-multi", ["compute.teacher_archs={}"])


def test_the_compute_command_prints_the_estimate():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "distill.compute", "b14", "--gpus", "16"], capture_output=True,
                         text=True, check=True)
    printed = json.loads(out.stdout)
    assert printed["gpu_hours_per_100m_samples"] == pytest.approx(74.27, rel=1e-3)
    assert printed["memory_per_gpu"]["processes"] == 16
    assert printed["cache_mb_per_image_per_crop"]["448"]["int8"] == pytest.approx(1.583152)  # the 448 px phase


def test_the_cache_and_cached_runs_cost_what_their_parts_do():
    one = estimate_compute(load_recipe("b14", ["train.resolution_phases=[]"]))
    per_hour = 989e12 * 0.4 * 3600  # FLOPs an H100 does in an hour at the recipes' assumed peak and MFU
    assert one.teacher_gpu_hours_per_1m_images == pytest.approx(1e6 * one.teacher_gflops_per_image * 1e9 / per_hour)
    assert one.cached_gpu_hours_per_100m_samples == pytest.approx(
        1e8 * (one.train_gflops_per_image - one.teacher_gflops_per_image) * 1e9 / per_hour)


def test_model_state_per_gpu_adds_up():
    """docs/training.md's memory table: the frozen g/14 in bf16, the student's fp32 weights, gradients, DDP buckets
    and AdamW moments, replicated under DDP; sharding splits the student's state only."""
    import torch

    from students import build_student

    assert tuple(round(n / 1e6, 1) for n in tower_params("g14")) == (1136.0, 389.1)  # tests/test_teachers_sizes.py
    with torch.device("meta"):
        b14 = build_student("tipsv2-b14", teacher_width=1536, image_size=224)
    assert trained_params(load_recipe("b14")) == sum(p.numel() for p in b14.parameters())  # InfoNCE: no extra
    assert trained_params(load_recipe("so400m14")) - 1 == sum(  # sigmoid: + the logit bias
        p.numel() for p in build_student("tipsv2-so400m14", teacher_width=1536, image_size=224).to("meta").parameters())
    memory = memory_per_gpu(load_recipe("l14"), 8)
    gib = 2**30
    assert memory.teacher_gib == pytest.approx(sum(tower_params("g14")) * 2 / gib)
    state = memory.student_params * 16 / gib  # weights + gradients + 2 moments, fp32
    assert memory.ddp_gib == pytest.approx(memory.teacher_gib + state + memory.student_params * 4 / gib)
    assert memory.sharded_gib == pytest.approx(memory.teacher_gib + state / 8)
    assert memory.sharded_teacher_too_gib == pytest.approx((memory.teacher_gib + state) / 8)
    cached = memory_per_gpu(load_recipe("l14", ["cache=/some/cache", "train.resolution_phases=[]"]), 8)
    assert cached.teacher_params == 0 and cached.student_params == memory.student_params


def test_cache_storage_counts_what_the_writer_stores():
    tokens, width = 2 + 32 * 32, 1536  # g/14 at 448 px: CLS1, the register, 32x32 patches
    assert cache_bytes_per_image("g14", 448) == 48 + tokens * width * 2
    assert cache_bytes_per_image("g14", 448, compression="int8") == 48 + 2 * width * 2 + 1024 * (width + 4)
    assert cache_bytes_per_image("g14", 448, compression="pca:256", augmentations=4) == 4 * (
        48 + 2 * width * 2 + 1024 * 256 * 2)
    assert cache_bytes_per_image("g14", 224, "fp16") == 48 + (2 + 16 * 16) * width * 2
    assert cache_basis_bytes("g14", "pca:256") == 257 * width * 4 and cache_basis_bytes("g14", "int8") == 0


def test_cache_storage_matches_a_written_shard(tmp_path):
    """The count against the bytes of real shards of the micro teacher: the shards' tensors, headers aside."""
    from safetensors import safe_open

    from distill.cli import main
    from teachers import load_teacher

    teacher = load_teacher("micro")
    for compression in ("none", "int8", "pca:8"):
        out = tmp_path / compression.replace(":", "")
        assert main(["cache", "--teacher", "micro", "--data", "scenes", "--data-option", "length=4", "--out", str(out),
                     "--augmentations", "2", "--image-size", "64", "--compress", compression]) == 0
        stored = 0
        for shard in out.glob("*.safetensors"):
            if shard.name.startswith("shard-"):
                with safe_open(shard, "pt") as f:
                    stored += sum(f.get_tensor(key).nbytes for key in f.keys())
        assert stored == 4 * cache_bytes_per_image(teacher, 64, compression=compression, augmentations=2), compression
        if compression == "pca:8":
            with safe_open(out / "pca_basis.safetensors", "pt") as f:
                assert sum(f.get_tensor(key).nbytes for key in f.keys()) == cache_basis_bytes(teacher, compression)


def test_g14_forward_flops_match_known_count():
    # DINOv2 reports ~291 GMACs for ViT-g/14 at 224 px; TIPSv2-g/14 has the same body (+1 register).
    single = estimate_compute(load_recipe("b14", ["train.resolution_phases=[]"]))
    assert 570 < single.teacher_gflops_per_image < 620


def test_resolution_phases_weight_the_compute_by_their_steps():
    recipe = load_recipe("b14")
    assert recipe.phases() == [(0, 90000, 224, 224), (90000, 100000, 448, 448)]
    assert recipe.view_sizes(89999) == (224, 224) and recipe.view_sizes(90000) == (448, 448)
    at = {size: estimate_compute(load_recipe("b14", ["train.resolution_phases=[]", f"student.image_size={size}",
                                                     f"teacher.image_size={size}"])) for size in (224, 448)}
    mixed = estimate_compute(recipe)
    assert mixed.train_gflops_per_image == pytest.approx(0.9 * at[224].train_gflops_per_image
                                                         + 0.1 * at[448].train_gflops_per_image)


@pytest.mark.parametrize("phases, words", [
    ("[{from_step: 0, student_size: 64}]", "from_step"),
    ("[{from_step: 50, student_size: 60}]", "a multiple of tipsv2-pico's patch size 8"),
    ("[{from_step: 200, student_size: 32}, {from_step: 100, student_size: 64}]", "from_step"),
])
def test_bad_resolution_phases_are_refused(phases, words):
    with pytest.raises(UserError, match=words):
        load_recipe("micro", [f"train.resolution_phases={phases}"])
    with pytest.raises(UserError, match="one teacher size with cache=DIR"):
        load_recipe("micro", ["cache=/some/cache", "loss.contrastive.text_tower=student",
                              "train.resolution_phases=[{from_step: 50, student_size: 32}]"])


def test_overrides_coerce_types():
    recipe = load_recipe("micro", ["max_steps=40", "loss.mask_ratio=0.3", "optim.lr=3e-4", "teacher.spec=123",
                                   "teacher.image_size=null", "loss.mix.mse=0.2", "optim.betas=[0.9, 0.95]",
                                   "loss.contrastive.caption_weights.long=0", "gradient_checkpointing=true"])
    assert recipe.train.max_steps == 40 and recipe.loss.mask_ratio == 0.3 and recipe.optim.lr == 3e-4
    assert recipe.teacher.spec == "123" and recipe.teacher.image_size is None
    assert recipe.loss.mix["mse"] == 0.2 and recipe.optim.betas == [0.9, 0.95]
    assert recipe.loss.contrastive.caption_weights["long"] == 0.0 and recipe.train.gradient_checkpointing


@pytest.mark.parametrize("override, message", [
    ("loss.mask_ratoi=0.3", "unknown recipe key 'loss.mask_ratoi'"),
    ("train.max_steps=abc", "'train.max_steps' must be int"),
    ("train.max_steps=1.5", "'train.max_steps' must be int"),
    ("loss.distance=l1", "'loss.distance' must be 'cosine' | 'smooth_l1' | 'mse' | 'mix'"),
    ("loss.mask_ratio=1.2", "'loss.mask_ratio' is 1.2; expected a value in [0, 1)"),
    ("loss.contrastive.caption_weights.tiny=1", "'loss.contrastive.caption_weights.tiny'"),
    ("train.batch_size=10", "'train.batch_size' is 10; expected a multiple of train.grad_accum_steps"),
    ("nonsense=1", "unknown recipe key 'nonsense'"),
    ("max_steps", "is not key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    base = load_recipe("micro", ["grad_accum_steps=4", "batch_size=16"])
    with pytest.raises(UserError, match=None) as err:
        apply_overrides(base, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_yaml_files(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  max_step: 3\n")
    with pytest.raises(UserError, match="unknown recipe key 'train.max_step'"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("loss:\n  contrastive: 3\n")
    with pytest.raises(UserError, match="'loss.contrastive' must be a mapping"):
        load_recipe(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("train: [\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(tmp_path / "c.yaml")
    with pytest.raises(UserError, match="neither a file nor a packaged recipe"):
        load_recipe("no-such-recipe")


def test_switching_the_source_kind_drops_the_other_kinds_options(tmp_path, caplog):
    """The micro recipe's scene options (`size`, `length`) do not fit a folder: they go, and the log says so."""
    import logging

    with caplog.at_level(logging.INFO, logger="distill.recipe_loader"):
        recipe = load_recipe("micro", [f"data.source=folder:{tmp_path}"])
    assert recipe.data.options == {} and "dropping the recipe's data.options" in caplog.text
    kept = load_recipe("micro", ["data.source=scenes:heldout"])  # same kind: the options stay
    assert kept.data.options == {"size": 64, "length": 100000}
    explicit = load_recipe("micro", [f"data.source=folder:{tmp_path}", "data.options={index: captions.csv}"])
    assert explicit.data.options == {"index": "captions.csv"}


@pytest.mark.parametrize("override, words", [("optim.lr=inf", "'optim.lr' is inf; expected a finite number"),
                                             ("loss.mix.cosine=nan", "'loss.mix.cosine' is nan"),
                                             ("seed=-1", "'seed' is -1; expected an int >= 0"),
                                             ("student.image_size=60", "a multiple of tipsv2-pico's patch size 8")])
def test_non_finite_numbers_negative_seeds_and_sizes_off_the_patch_grid_are_refused(override, words):
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace("'", "'")):
        load_recipe("micro", [override])


@pytest.mark.parametrize("overrides, words", [
    (["loss.patch_tokens=masked", "loss.mask_ratio=0"], "'loss.patch_tokens' is 'masked'; expected all when "
                                                        "loss.mask_ratio is 0"),
    (["cache=/some/cache"], "'loss.contrastive.text_tower' is 'teacher'; expected student with cache=DIR"),
])
def test_recipes_that_would_fail_at_step_1_are_refused_on_load(overrides, words):
    with pytest.raises(UserError, match=words):
        load_recipe("micro", overrides)


def test_overrides_may_follow_the_options(tiny_tipsv2_dir):
    from distill.cli import build_parser, parse

    args = parse(build_parser(), ["distill", "--recipe", "micro", "max_steps=4", "--out", "runs/x", "--resume",
                                  "train.batch_size=8"])
    assert args.overrides == ["max_steps=4", "train.batch_size=8"] and args.resume
    with pytest.raises(SystemExit):
        parse(build_parser(), ["distill", "--out", "runs/x", "--no-such-flag"])
