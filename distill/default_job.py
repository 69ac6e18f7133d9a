"""The embedded default job: distil a pico student from the packaged micro teacher (4.2x its vision parameters)
on the built-in scenes, then evaluate teacher and student side by side (zero-shot segmentation, held-out scenes).

The teacher (`micro`, under `teachers/assets/micro_teacher/`) is a real `Tipsv2Model` + tokenizer (fp16
weights to keep the package small), pretrained by this toolkit. Regenerate it with:

    tipsdistill pretrain --recipe micro-teacher --out runs/micro-teacher
    python -m distill.default_job --package runs/micro-teacher/model

The several-teachers lab's second teacher (`micro-ssl`: the same recipe without its caption term) likewise:

    tipsdistill pretrain --recipe micro-teacher loss.contrastive.weight=0 train.max_steps=800 --out runs/micro-ssl
    python -m distill.default_job --package runs/micro-ssl/model --name micro-ssl
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer, Tipsv2Model

from distill.recipe_loader import load_recipe
from distill.eval import evaluate
from distill.eval.models import TEACHER_SPACE
from distill.run import run_training
from common.atomic import atomic_directory
from common.lock import OutputLock
from teachers.load import PACKAGED

TEACHER = "micro"
RECIPE = "micro"
# Held-out scenes (material stuff classes, colour thing classes), enough of them that the bootstrap interval of
# the student - teacher difference is narrower than the differences the lab measures between recipes.
EVAL_DATASET = "scenes:length=1024"
# The micro recipe as written, without intermediate checkpoints: the job is a demonstration, not a long run.
DEFAULT_OVERRIDES = ("train.checkpoint_every=0",)


def run_default(out_dir, overrides: list[str] = ()) -> dict:
    """Distil into `out_dir/run`, evaluate into `out_dir` (report.json with models `teacher`, `student`): the
    student is narrower than its teacher, so it is read in the teacher's space with the teacher's text tower."""
    out = Path(out_dir)
    recipe = load_recipe(RECIPE, [*DEFAULT_OVERRIDES, *overrides])
    with OutputLock(out):  # the report's directory; the run inside it has its own lock
        student = run_training(recipe, out / "run")
        return evaluate({"teacher": recipe.teacher.spec, "student": f"{student}{TEACHER_SPACE}"}, "zeroshot-seg",
                        EVAL_DATASET, out)


def package_teacher(model_dir, target: Path = PACKAGED[TEACHER]) -> Path:
    """Copy a pretrained `Tipsv2Model` + tokenizer into the package, weights in fp16, atomically."""
    model = Tipsv2Model.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with atomic_directory(target, overwrite=True) as tmp:
        model.half().save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ship a pretrained micro teacher as a packaged one")
    parser.add_argument("--package", required=True, metavar="MODEL_DIR",
                        help="a `tipsdistill pretrain` output (OUT/model)")
    parser.add_argument("--name", choices=sorted(PACKAGED), default=TEACHER, help="which packaged teacher it becomes")
    args = parser.parse_args(argv)
    print(f"packaged teacher: {package_teacher(args.package, PACKAGED[args.name])}")


if __name__ == "__main__":
    main()
