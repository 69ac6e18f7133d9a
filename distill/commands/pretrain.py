"""`tipsdistill pretrain --recipe RECIPE [key=value ...] --out DIR [--resume] [--stop-at N]`: TIPSv2 stage-1
pretraining."""
from __future__ import annotations

import argparse
from pathlib import Path

from distill.commands import add_run_arguments, training_logs

DEFAULT_RECIPE = "micro-teacher"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pretrain", help="pretrain a TIPSv2 model (contrastive + DINO + iBOT++, head-only EMA)",
        description="TIPSv2 stage-1 pretraining: caption contrastive on both CLS tokens + alpha * DINO CLS loss + "
                    "beta * iBOT++ patch loss, head-only EMA. Writes a Tipsv2Model + tokenizer to DIR/model.")
    parser.add_argument("--recipe", help=f"recipe YAML file or packaged recipe name with a pretrain: section "
                                         f"(default: {DEFAULT_RECIPE}; with --resume, the run's recipe.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="recipe overrides, e.g. max_steps=40 patch_tokens=masked pretrain.ema=full")
    parser.add_argument("--out", default="runs/micro-teacher", help="run directory (default: runs/micro-teacher)")
    add_run_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from distill.recipe_loader import load_recipe
    from distill.run import run_training
    from common.errors import UserError

    training_logs()
    name = args.recipe or (Path(args.out) / "recipe.yaml" if args.resume else DEFAULT_RECIPE)
    recipe = load_recipe(name, args.overrides)
    if not recipe.is_pretraining:
        raise UserError(f"recipe {name} has no pretrain: section; expected a pretraining recipe such as "
                        f"{DEFAULT_RECIPE} (distillation recipes run with `tipsdistill distill`)")
    model = run_training(recipe, args.out, resume=args.resume, stop_at=args.stop_at)
    print(f"pretrained model (Tipsv2Model + tokenizer): {model}")
    return 0
