"""Several teachers distilled into one student at once: per-teacher heads, loss terms and target statistics,
resume, the recipe's rules and the errors for teachers that cannot be matched."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.errors import UserError
from conftest import tiny_tipsv2_config
from distill.cli import main
from distill.recipe_loader import load_recipe
from distill.run import run_training

TINY = ["student.name=tipsv2-nano", "student.image_size=32", "data.options.size=32", "data.options.length=16",
        "log_every=1", "checkpoint_every=0", "batch_size=8", "loss.calibration_batches=1"]


def _save_teacher(path: Path, tokenizer, seed: int, **vision) -> Path:
    from transformers import Tipsv2Model

    torch.manual_seed(seed)
    config = tiny_tipsv2_config(vocab_size=len(tokenizer), width=24, heads=2)
    for key, value in vision.items():
        setattr(config.vision_config, key, value)
    Tipsv2Model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def second_dir(tmp_path_factory, tiny_tokenizer):
    """Another width (24) and patch size (16: a 2x2 grid where the first teacher has 4x4)."""
    return _save_teacher(tmp_path_factory.mktemp("second") / "t", tiny_tokenizer, seed=1, patch_size=16)


def teachers(first, second, **extra) -> str:
    options = "".join(f", {k}: {v}" for k, v in extra.items())
    return f"teachers=[{{name: tips, spec: {first}}}, {{name: second, spec: {second}{options}}}]"


def recipe(first, second, *overrides, **extra):
    return load_recipe("micro", [teachers(first, second, **extra), *TINY, *overrides])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_teachers_train_resume_bitwise_and_save_both_head_sets(tiny_tipsv2_dir, second_dir, tmp_path):
    r = recipe(tiny_tipsv2_dir, second_dir, "max_steps=4", "loss.target_norm=channel",
               tokens="[cls, patches]", target_norm="phi-s", weight=0.5)
    straight = run_training(r, tmp_path / "straight")
    run_training(r, tmp_path / "split", stop_at=2)
    assert main(["distill", "--out", str(tmp_path / "split"), "--resume"]) == 0
    a, b = load_file(straight / "model.safetensors"), load_file(tmp_path / "split/student/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = metrics(tmp_path / "straight")
    assert [m["loss"] for m in rows] == [m["loss"] for m in metrics(tmp_path / "split")]
    # The second teacher's terms are logged apart; it supervises no register, so none is compared.
    assert {"distill/cls", "distill/register", "distill/second/cls", "distill/second/patch"} <= set(rows[0])
    assert "distill/second/register" not in rows[0]
    assert (tmp_path / "straight/target_norm.safetensors").is_file()
    assert (tmp_path / "straight/target_norm.second.safetensors").is_file()

    from students import load_student

    student = load_student(straight)
    assert student.teacher_width == 32 and student.teacher_heads["second"].teacher_width == 24
    assert [t["name"] for t in student.metadata["teacher"]["teachers"]] == ["tips", "second"]
    pixels = torch.rand(2, 3, 32, 32)
    assert student.teacher_space().encode_image(pixels).patches.shape == (2, 4, 4, 32)
    assert student.teacher_space("second").encode_image(pixels).patches.shape == (2, 4, 4, 24)


def test_the_teachers_after_the_first_keep_no_text_tower(tiny_tipsv2_dir, second_dir):
    # Only the primary's text tower serves the caption term: a second TIPSv2's would hold memory for nothing.
    from accelerate import Accelerator

    from distill.run import _target_source

    targets = _target_source(recipe(tiny_tipsv2_dir, second_dir), Accelerator(cpu=True), None, contrastive=True)
    first, second = (source.teacher for source in targets.teachers().values())
    assert first.has_text and not second.has_text and second.text is None
    assert not any(name.startswith("text.") for name, _ in second.named_parameters())


def test_the_exported_heads_output_each_teachers_space(tiny_tipsv2_dir, second_dir, tmp_path):
    """PHI-S on the second teacher only: its statistics are folded into its heads, the primary's stay raw."""
    from distill.run import build_run

    r = recipe(tiny_tipsv2_dir, second_dir, "max_steps=1", target_norm="phi-s")
    run = build_run(r, tmp_path / "run")
    task = run.unwrapped
    assert set(task.target_norms()) == {"second"} and task.norm is None
    exported = task.student_for_export()
    with torch.no_grad():
        tokens = task.student.image_tokens(torch.rand(2, 3, 32, 32))
        want = task.teacher_norms["second"].denormalize(task.student.project(tokens, "second"))
        got = exported.project(tokens, "second")
    assert torch.allclose(got.patches, want.patches, atol=1e-4)
    assert exported.heads is task.student.heads


def test_one_teacher_in_the_list_form_matches_the_teacher_section(tiny_tipsv2_dir, tmp_path):
    single = load_recipe("micro", [f"teacher.spec={tiny_tipsv2_dir}", *TINY, "max_steps=2"])
    listed = load_recipe("micro", [f"teachers=[{{name: tips, spec: {tiny_tipsv2_dir}}}]", *TINY, "max_steps=2"])
    a, b = run_training(single, tmp_path / "a"), run_training(listed, tmp_path / "b")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("overrides, expected", [
    (["teachers=[{name: a, spec: micro}, {name: a, spec: micro}]"], "'teachers[1].name'"),
    (["teacher.name=tips"], "'teacher.name'"),
    (["teachers=[{name: teacher, spec: micro}]"], "'teachers[0].name'"),
    (["teachers=[{name: 'a b', spec: micro}]"], "'teachers[0].name'"),
    (["teachers=[{name: a, spec: ''}]"], "'teachers[0].spec'"),
    (["teachers=[{name: a, spec: micro, weight: 0}]"], "'teachers'"),
    (["teachers=[{name: a, spec: micro, tokens: [cls, pixels]}]"], "'teachers[0].tokens'"),
    (["teachers=[{name: a, spec: micro, weight: -1}]"], "'teachers[0].weight'"),
    (["teachers=[{name: a, spec: micro, target_norm: pca}]"], "'teachers[0].target_norm'"),
    (["teachers=[{name: a, spec: micro, target_norm: channel}]",
      "students=[{name: tipsv2-pico, image_size: 64}, {name: tipsv2-nano, image_size: 64}]"], "'loss.target_norm'"),
])
def test_bad_teacher_lists_are_one_line_errors(overrides, expected):
    with pytest.raises(UserError) as info:
        load_recipe("micro", overrides)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_unmatched_registers_are_refused_before_any_step(tiny_tipsv2_dir, tiny_tokenizer, tmp_path, capsys):
    three = _save_teacher(tmp_path / "three", tiny_tokenizer, seed=2, num_register_tokens=3)
    args = ["distill", "--recipe", "micro", teachers(tiny_tipsv2_dir, three), *TINY, "max_steps=1"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "teachers[1] 'second' has 3 register tokens" in err and "[cls, patches]" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
    # Without registers in its tokens the same teacher trains.
    fixed = teachers(tiny_tipsv2_dir, three, tokens="[cls, patches]")
    assert main(["distill", "--recipe", "micro", fixed, *TINY, "max_steps=1", "--out", str(tmp_path / "ok")]) == 0


def test_each_teacher_runs_in_its_own_precision_on_a_gpu():
    from distill.config import TeacherConfig
    from distill.run import teacher_precision

    assert teacher_precision(TeacherConfig(), "cuda", "bf16") == torch.bfloat16
    assert teacher_precision(TeacherConfig(precision="no"), "cuda", "bf16") == torch.float32
    assert teacher_precision(TeacherConfig(precision="fp16"), "cuda", "no") == torch.float16
    assert teacher_precision(TeacherConfig(precision="bf16"), "cpu", "bf16") == torch.float32  # no fast CPU bf16


@pytest.mark.slow
def test_two_teachers_on_two_processes_match_one(tiny_tipsv2_dir, second_dir, tmp_path):
    """DDP with a second teacher that supervises no register (its register head in the graph x0): the same losses
    on 1 and 2 CPU processes, no unused-parameter error."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = [teachers(tiny_tipsv2_dir, second_dir, tokens="[cls, patches]"), *TINY, "max_steps=2",
              "loss.mask_ratio=0.3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(port)]
    for name, procs, mode in (("one", 1, "--cpu"), ("two", 2, "--multi_gpu")):
        cmd = [*launch, mode, "--num_processes", str(procs), "-m", "distill.cli", "distill", "--recipe", "micro",
               *common, "--out", str(tmp_path / name)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        for key in ("loss", "distill/patch", "distill/second/patch", "distill/second/cls"):
            assert abs(a[key] - b[key]) < 1e-4, (key, a[key], b[key])
