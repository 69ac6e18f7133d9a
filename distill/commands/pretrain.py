"""`tipsdistill pretrain --recipe RECIPE [key=value ...] --out DIR`: TIPSv2 stage-1 pretraining."""
from __future__ import annotations

import argparse
import logging


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pretrain", help="pretrain a TIPSv2 model (contrastive + DINO + iBOT++, head-only EMA)",
        description="TIPSv2 stage-1 pretraining: caption contrastive on both CLS tokens + alpha * DINO CLS loss + "
                    "beta * iBOT++ patch loss, head-only EMA. Writes a Tipsv2Model + tokenizer to DIR/model.")
    parser.add_argument("--recipe", default="micro-teacher",
                        help="recipe YAML file or packaged recipe name (default: micro-teacher)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="recipe overrides, e.g. max_steps=40 patch_tokens=masked pretrain.ema=full")
    parser.add_argument("--out", default="runs/micro-teacher", help="run directory (default: runs/micro-teacher)")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from distill.pretrain_run import load_pretrain_recipe, run_pretrain

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = run_pretrain(load_pretrain_recipe(args.recipe, args.overrides), args.out)
    print(f"pretrained model (Tipsv2Model + tokenizer): {model}")
    return 0
