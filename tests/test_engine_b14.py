"""The real b14 recipe against a g/14-shaped teacher: one optimizer step at 224 px, batch 2, on CPU."""
from __future__ import annotations

import json
import time

import pytest
import torch

from distill.recipe_loader import load_recipe
from distill.run import run_training
from teachers.random import random_tipsv2_teacher


@pytest.mark.slow
def test_b14_recipe_one_step_from_g14_teacher(tiny_tipsv2_dir, tmp_path):
    start = time.perf_counter()
    teacher = random_tipsv2_teacher("g14")
    built = time.perf_counter() - start
    assert sum(p.numel() for p in teacher.parameters()) == pytest.approx(1136.0e6, rel=1e-3)
    recipe = load_recipe("b14", [
        "max_steps=1", "train.resolution_phases=[]", "batch_size=2", "mixed_precision=no", "data.source=scenes",
        "data.options={size: 224, length: 2}", "data.num_workers=0", "loss.target_norm=none",
        f"student.tokenizer={tiny_tipsv2_dir}", "optim.warmup_steps=0",
    ])
    final = run_training(recipe, tmp_path / "run", teacher=teacher)
    [line] = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    metrics = json.loads(line)
    print(f"g/14 teacher built in {built:.1f}s; one b14 step in {time.perf_counter() - start - built:.1f}s")
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["contrastive/cls1"] > 0
    from students import load_student

    student = load_student(final)
    assert student.width == 768 and student.teacher_width == 1536 and student.patch_size == 14
