"""The distillation loop end to end on CPU with tiny models: loss falls, exact resume, 2 processes = 1."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from distill.cli import main
from distill.recipe_loader import load_recipe
from distill.run import run_training

TINY = [
    "student.name=tipsv2-nano", "student.image_size=32", "data.options.size=32", "data.options.length=24",
    "log_every=1", "checkpoint_every=0", "loss.contrastive.weight=1.0", "optim.warmup_steps=2",
]


def overriding(base: list[str], *overrides: str) -> list[str]:
    """`base` with `overrides` replacing its items of the same key: the command line refuses a key given twice."""
    keys = {item.split("=", 1)[0] for item in overrides}
    return [*(item for item in base if item.split("=", 1)[0] not in keys), *overrides]


def tiny_recipe(teacher_dir: Path, *overrides: str):
    return load_recipe("micro", [f"teacher.spec={teacher_dir}", *TINY, *overrides])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_micro_recipe_loss_falls(tiny_tipsv2_dir, tmp_path):
    recipe = tiny_recipe(tiny_tipsv2_dir, "max_steps=20", "batch_size=8", "optim.lr=3e-3")
    final = run_training(recipe, tmp_path / "run")
    losses = [m["loss"] for m in metrics(tmp_path / "run")]
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    assert {"distill/patch_masked", "distill/patch_visible", "contrastive/cls1", "contrastive/cls2"} <= set(
        metrics(tmp_path / "run")[0])
    from students import load_student

    student = load_student(final)
    # The micro recipe's contrastive term reads the frozen teacher's text tower: the student trains none of its own.
    assert student.teacher_width == 32 and student.text is None and student.metadata["teacher"]["spec"]
    assert student.metadata["recipe"]["train"]["max_steps"] == 20
    assert (tmp_path / "run" / "logs").is_dir()  # TensorBoard through the Accelerate tracker


def test_resume_is_bitwise_identical(tiny_tipsv2_dir, tmp_path):
    # Accumulation, masks, PHI-S calibration and an epoch boundary (24 images, 8 per step) all cross the resume point.
    args = ("max_steps=5", "batch_size=8", "grad_accum_steps=2", "loss.target_norm=phi-s",
            "loss.calibration_batches=2", "loss.contrastive.kind=sigmoid")
    recipe = tiny_recipe(tiny_tipsv2_dir, *args)
    straight = run_training(recipe, tmp_path / "straight")
    stopped = run_training(recipe, tmp_path / "split", stop_at=2)
    assert stopped.parent.name == "step_00000002"
    assert main(["distill", "--out", str(tmp_path / "split"), "--resume"]) == 0  # the recorded recipe
    resumed = tmp_path / "split" / "student"
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["loss"] for m in metrics(tmp_path / "straight")] == [m["loss"] for m in metrics(tmp_path / "split")]
    assert (tmp_path / "split" / "target_norm.safetensors").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tiny_tipsv2_dir, tmp_path):
    """Same global batch on 1 and 2 CPU processes: same losses (contrastive over the gathered batch)."""
    common = [f"teacher.spec={tiny_tipsv2_dir}", *TINY, "max_steps=3", "batch_size=8", "loss.mask_ratio=0.3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # accelerate 1.15's `--cpu` launcher spawns several processes only through MPI; `--multi_gpu` uses torchrun,
    # and the engine runs those processes on CPU (gloo) when no GPU is present.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    cli = ["-m", "distill.cli", "distill", "--recipe", "micro", *common]
    for name, procs, mode in (("one", 1, "--cpu"), ("two", 2, "--multi_gpu")):
        cmd = [*launch, mode, "--num_processes", str(procs), *cli, "--out", str(tmp_path / name)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"x {procs} processes" in done.stderr, done.stderr[-3000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key in ("loss", "contrastive/cls1", "contrastive/cls2", "distill/patch", "distill/cls"):
            assert abs(a[key] - b[key]) < 1e-4, (key, a[key], b[key])


def _write_shards(root: Path, shards: int = 2, per_shard: int = 8) -> str:
    import io
    import tarfile

    colours = ["red", "green", "blue", "yellow"]
    for shard in range(shards):
        with tarfile.open(root / f"shard-{shard}.tar", "w") as tar:
            for i in range(per_shard):
                colour = colours[(shard + i) % len(colours)]
                image = io.BytesIO()
                Image.new("RGB", (40, 40), colour).save(image, format="PNG")
                for name, data in ((f"{shard}{i:03d}.png", image.getvalue()),
                                   (f"{shard}{i:03d}.txt", f"a {colour} square".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return f"wds:{root}/shard-{{0..{shards - 1}}}.tar"


@pytest.mark.slow
def test_two_processes_stream_webdataset_shards(tiny_tipsv2_dir, tmp_path):
    """Streaming shards are split by process, outside Accelerate's dispatcher (which cannot carry captions)."""
    source = _write_shards(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1", "--num_processes", "2",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "distill.cli", "distill", "--recipe", "micro", f"teacher.spec={tiny_tipsv2_dir}", *TINY,
           f"data.source={source}", "data.options={}", "max_steps=2", "batch_size=4", "--out", str(tmp_path / "run")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x 2 processes" in done.stderr, done.stderr[-3000:]
    assert len(metrics(tmp_path / "run")) == 2
    assert (tmp_path / "run" / "student" / "student.json").is_file()


def test_images_without_captions_train_image_only(tiny_tipsv2_dir, tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        pixels = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    recipe = tiny_recipe(tiny_tipsv2_dir, f"data.source=folder:{folder}", "data.options={}", "max_steps=2",
                         "batch_size=4")
    with caplog.at_level(logging.INFO, logger="distill.run"):
        final = run_training(recipe, tmp_path / "run")
    assert "image-only distillation" in caplog.text
    assert not any(k.startswith("contrastive/") for k in metrics(tmp_path / "run")[0])
    from students import load_student

    assert load_student(final).text is None


def test_the_log_and_tensorboard_say_what_the_data_holds_before_step_1_and_name_bad_files(
        tiny_tipsv2_dir, tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(7):
        Image.new("RGB", (40, 48), (30 * i, 0, 0)).save(folder / f"{i}.png")
        if i < 5:
            (folder / f"{i}.txt").write_text(f"red {i}")
    (folder / "3.medium.txt").write_text("a red square")
    (folder / "9.png").write_bytes(b"")  # broken: skipped, named in the log
    recipe = tiny_recipe(tiny_tipsv2_dir, f"data.source=folder:{folder}", "data.options={}", "max_steps=4",
                         "batch_size=4")
    with caplog.at_level(logging.INFO, logger="distill"):
        run_training(recipe, tmp_path / "run")
    lines = caplog.text.splitlines()
    summary = next(i for i, line in enumerate(lines) if "8 images, captions: short 5, medium 1; 4 steps x 4 = 16 "
                   "images = 2.0 epochs" in line)
    # After training, two epochs have drawn 9.png twice: one file skipped, by name.
    counted = next(i for i, line in enumerate(lines) if "data: 16 samples drawn; skipped 1 (empty_file 1: 9.png)" in line)
    assert summary < counted
    events = EventAccumulator(str(next((tmp_path / "run" / "logs").rglob("events.out.tfevents.*")))).Reload()
    assert {"data/images", "data/captions/short", "data/captions/medium", "data/skipped/empty_file"} <= set(
        events.Tags()["scalars"])
    assert events.Scalars("data/captions/short")[0].value == 5
    assert events.Scalars("data/skipped/empty_file")[-1].value == 1


def test_other_options_frozen_teacher_text_and_grid_resize(tiny_tipsv2_dir, tmp_path, caplog):
    # Teacher at 48 px (6x6 patches), student at 32 px (4x4): the student grid is resized, and it says so once.
    recipe = tiny_recipe(tiny_tipsv2_dir, "teacher.image_size=48", "max_steps=2", "batch_size=4",
                         "loss.contrastive.text_tower=teacher", "loss.target_norm=channel", "loss.distance=smooth_l1",
                         "loss.patch_tokens=masked", "train.gradient_checkpointing=true", "student.head=mlp")
    with caplog.at_level(logging.INFO, logger="distill.tasks.distill_task"):
        final = run_training(recipe, tmp_path / "run")
    assert caplog.text.count("resizing the student's patch tokens") == 1
    rows = metrics(tmp_path / "run")
    assert all(torch.isfinite(torch.tensor(r["contrastive/cls2"])) for r in rows)
    from students import load_student

    student = load_student(final)  # no text tower: captions went through the frozen teacher tower + projection
    assert student.text is None and student.head_kind == "mlp"
    state = load_file(tmp_path / "run" / "checkpoints" / "step_00000002" / "model.safetensors")
    assert "contrastive.text_projection.weight" in state and "norm.patches_std" in state


def test_cli_errors(tiny_tipsv2_dir, tmp_path, capsys):
    base = ["distill", "--recipe", "micro", f"teacher.spec={tiny_tipsv2_dir}", *TINY]
    assert main([*base, "--out", str(tmp_path / "a"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main([*base, "loss.mask_ratoi=0.3", "--out", str(tmp_path / "a")]) == 2
    assert "'loss.mask_ratoi'" in capsys.readouterr().err
    assert main([*base, "max_steps=two", "--out", str(tmp_path / "a")]) == 2
    assert "'train.max_steps' must be int" in capsys.readouterr().err
    assert main(["distill", "--recipe", "micro", "teacher.spec=", "--out", str(tmp_path / "b")]) == 2
    assert "teacher.spec" in capsys.readouterr().err
    (tmp_path / "c" / "student").mkdir(parents=True)
    assert main([*base, "--out", str(tmp_path / "c")]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_a_resolution_phase_switches_both_views_and_resumes_exactly_across_the_switch(tiny_tipsv2_dir, tmp_path,
                                                                                       monkeypatch):
    """Steps 1-2 at 32 px, steps 3-5 at 48 px (student and teacher); stopped at 2 and at 3, and resumed, the run
    ends with the weights and losses of an uninterrupted one."""
    from transformers import Tipsv2VisionModel

    sizes = []
    original = Tipsv2VisionModel.forward

    def spy(self, *args, **kwargs):
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        sizes.append(("student" if self.training else "teacher", pixels.shape[-1]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Tipsv2VisionModel, "forward", spy)
    args = ("max_steps=5", "batch_size=8", "loss.mask_ratio=0.3",
            "train.resolution_phases=[{from_step: 2, student_size: 48, teacher_size: 48}]")
    recipe = tiny_recipe(tiny_tipsv2_dir, *args)
    straight = run_training(recipe, tmp_path / "straight")
    assert [s for who, s in sizes if who == "student"] == [32, 32, 48, 48, 48]
    assert [s for who, s in sizes if who == "teacher"] == [32, 32, 48, 48, 48]
    for stop in (2, 3):
        run_training(recipe, tmp_path / f"split{stop}", stop_at=stop)
        resumed = run_training(recipe, tmp_path / f"split{stop}", resume=True)
        a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert [m["loss"] for m in metrics(tmp_path / "straight")] == [m["loss"] for m in metrics(tmp_path / f"split{stop}")]


def test_target_calibration_spans_calibration_batches(tiny_tipsv2_dir, tmp_path):
    """The saved target statistics are those of the first `loss.calibration_batches` batches of epoch 0, all
    of them: computed here by hand from the teacher's tokens."""
    from distill.run import build_run

    recipe = tiny_recipe(tiny_tipsv2_dir, "max_steps=2", "batch_size=8", "loss.target_norm=channel",
                         "loss.calibration_batches=2")
    run = build_run(recipe, tmp_path / "run")
    run.loader.set_epoch(0)
    batches = []
    for batch in run.loader:
        batches.append(run.targets.tokens(batch.to("cpu")).patches.reshape(-1, run.targets.width).double())
        if len(batches) == 2:
            break
    norm = run.unwrapped.norm
    for rows in (torch.cat(batches), batches[0]):
        matches = torch.allclose(norm.patches_mean.double(), rows.mean(0), atol=1e-5)
        assert matches == (rows.shape[0] > batches[0].shape[0])  # the two batches, not the first alone
    torch.testing.assert_close(norm.patches_std.double(), torch.cat(batches).std(0, correction=0), atol=1e-5,
                               rtol=1e-4)
