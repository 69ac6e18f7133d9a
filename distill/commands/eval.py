"""`tipsdistill eval`: teacher vs students on one task and dataset, one report."""
from __future__ import annotations

import argparse

import torch

from distill.eval import TASKS, evaluate
from distill.eval.models import parse_model_args
from distill.eval.readers import READERS

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval", help="evaluate teachers and students side by side",
        description="Evaluate models side by side and write DIR/report.json, report.md and PNGs.")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=SPEC",
                        help="a model: anything the teacher layer loads (hub id, save_pretrained dir, .npz pair, "
                             "timm:NAME, student checkpoint, exported student); repeat for several")
    parser.add_argument("--task", required=True, choices=list(TASKS))
    parser.add_argument("--dataset", required=True, metavar="KIND:PATH|scenes",
                        help=f"zeroshot-seg: {', '.join(READERS)} (KIND:PATH) or scenes[:length=N,size=S,seed=K]; "
                             "retrieval/fidelity: scenes or a data spec of the distill engine; zeroshot-cls: folder:PATH")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--save-predictions", metavar="DIR", help="zeroshot-seg: one label PNG per image and model")
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--window", type=int, default=448, help="zeroshot-seg sliding window side (default 448)")
    window.add_argument("--whole-image", action="store_true", help="zeroshot-seg: one pass over the whole image")
    parser.add_argument("--stride", type=int, default=336, help="zeroshot-seg window stride (default 336)")
    parser.add_argument("--short-side", type=int, help="zeroshot-seg resize of the shorter side "
                                                       "(default 448; scenes: the scene size)")
    parser.add_argument("--no-value-trick", action="store_true", help="zeroshot-seg: plain last-block patch features")
    parser.add_argument("--overlays", type=int, default=4, metavar="N",
                        help="zeroshot-seg: overlay PNGs for the first N images per model (default 4; 0: none)")
    parser.add_argument("--resolution", type=int, help="retrieval/zeroshot-cls/fidelity square input side "
                                                       "(default: the model's native size)")
    parser.add_argument("--reference", metavar="NAME", help="fidelity: the teacher model (default: the first --model)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=list(_DTYPES), default="fp32")
    parser.set_defaults(func=run)
    return parser


def task_options(args: argparse.Namespace) -> dict:
    """The options of `args.task` only, so that evaluate() sees exactly the fields of its options class."""
    options = {"limit": args.limit, "workers": args.workers}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if args.task == "zeroshot-seg":
        options.update(short_side=args.short_side, window=None if args.whole_image else args.window,
                       stride=args.stride, value_trick=not args.no_value_trick, overlays=args.overlays,
                       save_predictions=args.save_predictions)
    else:
        options["resolution"] = args.resolution
    if args.task == "fidelity":
        options["reference"] = args.reference
    return options


def run(args: argparse.Namespace) -> int:
    from tipscore.lock import OutputLock

    with OutputLock(args.out):  # before any model loads: a busy or unwritable --out fails at once
        evaluate(parse_model_args(args.model), args.task, args.dataset, args.out, device=args.device,
                 dtype=getattr(torch, _DTYPES[args.dtype]), **task_options(args))
    return 0
