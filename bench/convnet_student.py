"""A micro convnet student against the pico ViT student: both distilled from the packaged micro teacher with the
default job's settings (`recipes/micro.yaml` and `recipes/micro-convnet.yaml` differ in the student alone), then
evaluated together with the teacher on the held-out scenes: zero-shot segmentation in the teacher's space,
percentile bootstrap over images paired across models (differences against the pico student), the eval's cost
columns. Nothing here was tuned on these numbers: the convnet's shape is the recipe's, fixed before the run.

Usage: python bench/convnet_student.py [--work DIR] [--out bench/results/convnet_student.json] [--quick]
A finished run found in --work is reused (an interrupted job continues with the evaluation).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from lab import emit
from main_job import QUICK, SCORES, machine

from distill.config import load_recipe
from distill.default_job import DEFAULT_OVERRIDES, EVAL_DATASET, TEACHER
from distill.eval import evaluate
from distill.eval.models import TEACHER_SPACE
from distill.run import run_training

STUDENTS = {"pico": "micro", "convnet": "micro-convnet"}  # name -> packaged recipe
QUICK_EVAL = "scenes:length=8"


def train(work: Path, name: str, recipe_name: str, quick: bool) -> tuple[Path, float | None]:
    """The run's final student and its training seconds (None when an earlier job's finished run is reused)."""
    out, recipe = work / name, load_recipe(recipe_name, [*DEFAULT_OVERRIDES, *(QUICK if quick else ())])
    if (out / "student").is_dir():
        return out / "student", None
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    final = run_training(recipe, out, show_progress=False)
    return final, round(time.perf_counter() - start, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument("--quick", action="store_true", help="2 training steps, 8 scenes: a smoke test")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="tipsdistill-convnet-"))
    trained = {name: train(work, name, recipe, args.quick) for name, recipe in STUDENTS.items()}
    # The pico student first: the bootstrap's paired differences are taken against the first column.
    models = {**{name: f"{final}{TEACHER_SPACE}" for name, (final, _) in trained.items()}, "teacher": TEACHER}
    report = evaluate(models, "zeroshot-seg", QUICK_EVAL if args.quick else EVAL_DATASET, work / "eval", quiet=True,
                      overlays=0)
    result = {"recipes": STUDENTS, "quick": args.quick, "machine": machine(), "threads": torch.get_num_threads(),
              "train_s": {name: seconds for name, (_, seconds) in trained.items()},
              "models": {name: {m: scores[m] for m in SCORES} for name, scores in report["models"].items()},
              "bootstrap": report["bootstrap"], "cost": report.get("cost"), "dataset": report["dataset"]}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
