"""`tipsdistill eval`: teacher vs students on one task and dataset, one report."""
from __future__ import annotations

import argparse

import torch

from distill.commands import data_options
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
                             "timm:NAME, student checkpoint, exported student; STUDENT@teacher or STUDENT@NAME: a "
                             "student in its (first) teacher's or the named teacher's space); repeat for several")
    parser.add_argument("--task", required=True, choices=list(TASKS))
    parser.add_argument("--dataset", required=True, metavar="KIND:PATH|scenes",
                        help=f"zeroshot-seg/linear-seg: {', '.join(READERS)} (KIND:PATH) or "
                             "scenes[:length=N,size=S,seed=K]; depth: nyu:PATH or scenes[:...]; retrieval/fidelity: "
                             "scenes or a data spec of the distill engine; zeroshot-cls: folder:PATH (one folder per "
                             "class); knn: folder:ROOT with ROOT/train/<class>/ and ROOT/val/<class>/")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--save-predictions", metavar="DIR", help="zeroshot-seg: one label PNG per image and model")
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--window", type=int, default=448, help="zeroshot-seg sliding window side (default 448)")
    window.add_argument("--whole-image", action="store_true", help="zeroshot-seg: one pass over the whole image")
    parser.add_argument("--stride", type=int, default=336, help="zeroshot-seg window stride (default 336)")
    parser.add_argument("--short-side", type=int, help="zeroshot-seg resize of the shorter side "
                                                       "(default 448; scenes: the scene size)")
    parser.add_argument("--no-value-trick", action="store_true", help="zeroshot-seg: plain last-block patch features")
    parser.add_argument("--overlays", type=int, metavar="N",
                        help="zeroshot-seg/linear-seg/depth: PNG panels for the first N images per model "
                             "(default 4; 0: none)")
    parser.add_argument("--resolutions", metavar="R1,R2,...",
                        help="zeroshot-seg/linear-seg/depth/knn: evaluate at each input size (short side and window; "
                             "knn: square side), metrics keyed metric@R, e.g. 224,336,448,672")
    parser.add_argument("--data-option", action="append", default=None, metavar="KEY=VALUE",
                        help="retrieval/fidelity: an option of the image set's data source, as a recipe's "
                             "data.options (repeatable), e.g. split=test, index=captions.csv")
    parser.add_argument("--resolution", type=int, help="retrieval/zeroshot-cls/fidelity square input side "
                                                       "(default: the model's native size)")
    parser.add_argument("--reference", metavar="NAME", help="fidelity: the teacher model (default: the first --model)")
    probe = parser.add_argument_group("linear-seg and depth probes (defaults: the dataset's protocol, DINOv2's on "
                                      "real data: 40000 iterations, batch 16, lr 1e-3, crop 512)")
    probe.add_argument("--crop", type=int, metavar="N",
                       help="short side, training crop and sliding window (stride 2/3)")
    probe.add_argument("--iterations", type=int, metavar="N", help="training steps of the head")
    probe.add_argument("--lr", type=float, help="AdamW learning rate (linear warmup, then linear decay to 0)")
    probe.add_argument("--seed", type=int, help="head initialisation and batch order (default 0)")
    probe.add_argument("--feature-cache", metavar="DIR", help="keep the cached training features in memory-mapped "
                                                              "files under DIR (big sets) instead of memory")
    probe.add_argument("--head", help="depth: linear (DINOv2's bins probe, default) or dpt (transformers' "
                                      "Tipsv2DptForDepthEstimation head on four frozen blocks)")
    probe.add_argument("--dpt-width", type=int, metavar="N", help="depth --head dpt: fusion width "
                                                                  "(default 256, the official; scenes 32)")
    knn = parser.add_argument_group("knn")
    knn.add_argument("--k", type=int, help="neighbours (default 20)")
    knn.add_argument("--temperature", type=float, help="vote weight exp(cos / T) (default 0.07)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=list(_DTYPES), default="fp32")
    parser.add_argument("--no-cost", action="store_true",
                        help="leave out the cost rows (parameters, GFLOPs/image, images/s, peak memory) and their "
                             "measurement")
    parser.set_defaults(func=run)
    return parser


# Passed on only when given, so that one a task does not have is a one-line error rather than ignored.
_WHEN_GIVEN = ("batch_size", "overlays", "resolutions", "resolution", "crop", "iterations", "lr", "seed",
               "feature_cache", "head", "dpt_width", "k", "temperature")


def task_options(args: argparse.Namespace) -> dict:
    """The options of `args.task` only, so that evaluate() sees exactly the fields of its options class."""
    options = {"limit": args.limit, "workers": args.workers}
    if args.task == "zeroshot-seg":
        options.update(short_side=args.short_side, window=None if args.whole_image else args.window,
                       stride=args.stride, value_trick=not args.no_value_trick, save_predictions=args.save_predictions)
    if args.task == "fidelity":
        options["reference"] = args.reference
    options.update({name: getattr(args, name) for name in _WHEN_GIVEN if getattr(args, name) is not None})
    if args.data_option is not None:
        options["data_options"] = data_options(args.data_option)
    return options


def run(args: argparse.Namespace) -> int:
    from common.lock import OutputLock

    with OutputLock(args.out):  # before any model loads: a busy or unwritable --out fails at once
        evaluate(parse_model_args(args.model), args.task, args.dataset, args.out, device=args.device,
                 dtype=getattr(torch, _DTYPES[args.dtype]), cost=not args.no_cost, **task_options(args))
    return 0
