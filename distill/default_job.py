"""The embedded default job: distil a micro student from the packaged micro teacher on the built-in
scenes, then evaluate teacher and student side by side (zero-shot segmentation, held-out scenes).

The teacher under `distill/assets/micro_teacher/` is a real `Tipsv2Model` + tokenizer (fp16 weights to
keep the package small), pretrained by this toolkit. Regenerate it with:

    tipsdistill pretrain --recipe micro-teacher --out runs/micro-teacher
    python -m distill.default_job --package runs/micro-teacher/model
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from teachers.atomic import atomic_directory

TEACHER_DIR = Path(__file__).resolve().parent / "assets" / "micro_teacher"
RECIPE = "micro"
EVAL_DATASET = "scenes"  # held-out scenes: texture (stuff) and colour (thing) classes
# Scene captions name positions ("on the left"): a flipped image would contradict its caption. The step
# count keeps the job at a few minutes on 2 CPU cores.
DEFAULT_OVERRIDES = ("data.flip_p=0.0", "train.max_steps=120", "train.checkpoint_every=0")


def teacher_overrides(teacher=TEACHER_DIR) -> list[str]:
    """What the default job adds to `recipes/micro.yaml`: the teacher, and its text tower as the student's
    starting text tower (same width; the identity-initialised heads then start the student's tokens in
    the space that text tower reads)."""
    return [f"teacher.spec={teacher}", f"student.text_init={teacher}", *DEFAULT_OVERRIDES]


def run_default(out_dir, overrides: list[str] = ()) -> dict:
    """Distil into `out_dir/run`, evaluate into `out_dir` (report.json with models `teacher`, `student`)."""
    from distill.config import load_recipe
    from distill.eval import evaluate
    from distill.train import run_distill

    out = Path(out_dir)
    recipe = load_recipe(RECIPE, [*teacher_overrides(), *overrides])
    student = run_distill(recipe, out / "run")
    return evaluate({"teacher": str(TEACHER_DIR), "student": str(student)}, "zeroshot-seg", EVAL_DATASET, out)


def package_teacher(model_dir, target: Path = TEACHER_DIR) -> Path:
    """Copy a pretrained `Tipsv2Model` + tokenizer into the package, weights in fp16, atomically."""
    from transformers import AutoTokenizer, Tipsv2Model

    model = Tipsv2Model.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with atomic_directory(target, overwrite=True) as tmp:
        model.half().save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # Package data: readable by everyone (mkdtemp and the writers create owner-only entries).
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ship a pretrained micro teacher as the packaged default")
    parser.add_argument("--package", required=True, metavar="MODEL_DIR",
                        help="a `tipsdistill pretrain` output (OUT/model)")
    args = parser.parse_args(argv)
    print(f"packaged teacher: {package_teacher(args.package)}")


if __name__ == "__main__":
    main()
