"""`tipsdistill distill --recipe RECIPE [key=value ...] --out DIR [--resume]`: train a student."""
from __future__ import annotations

import argparse
from pathlib import Path

from distill.commands import add_run_arguments, training_logs

DEFAULT_OUT = "runs/default"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "distill", help="distil a student from a frozen teacher",
        description="Distil a student from a frozen teacher (all-token patch distillation + caption contrastive). "
                    "Launch with `accelerate launch -m distill.cli distill ...` for several GPUs or machines.")
    parser.add_argument("--recipe",
                        help="recipe YAML file or packaged recipe name (micro, b14, l14, so400m14); "
                             "with --resume, defaults to the run's recipe.yaml; without it, the embedded default "
                             "job runs (packaged micro teacher, built-in scenes, then evaluation)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="recipe overrides, e.g. max_steps=40 loss.mask_ratio=0.3")
    parser.add_argument("--out", help=f"run directory (checkpoints, logs, final student); default job: {DEFAULT_OUT}")
    add_run_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from distill.recipe_loader import load_recipe
    from distill.run import run_training
    from common.errors import UserError

    training_logs()
    if args.recipe is None and not args.resume:
        # The main job: the packaged micro teacher distilled on the built-in scenes, then both evaluated.
        from distill.default_job import run_default

        out = Path(args.out or DEFAULT_OUT)
        run_default(out, args.overrides)
        print(f"report: {out / 'report.json'}")
        return 0
    if args.out is None:
        raise UserError("distill needs --out DIR, e.g. tipsdistill distill --recipe micro teacher.spec=DIR --out runs/x")
    # `--resume` alone continues with the recipe the run recorded.
    recipe = load_recipe(args.recipe or Path(args.out) / "recipe.yaml", args.overrides)
    if recipe.is_pretraining:
        raise UserError(f"recipe {args.recipe} has a pretrain: section; run it with `tipsdistill pretrain`")
    final = run_training(recipe, args.out, resume=args.resume, stop_at=args.stop_at)
    print(f"student checkpoint: {final}")
    return 0
