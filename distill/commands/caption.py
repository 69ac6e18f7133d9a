"""`tipsdistill caption --data SPEC --out DIR/metadata.jsonl --captioner MODEL`: synthetic captions for your images.

Writes one line per image, `{"file_name": ..., "short": ..., "medium": ..., "long": ...}`, which `folder:DIR`
and `hf:DIR` read back. Rerunning the same command finishes an interrupted run.
"""
from __future__ import annotations

import argparse
import os


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "caption", help="write short/medium/long synthetic captions for your images (Florence-2, PaliGemma, ...)",
        description="Caption every image of a data source with a transformers image-text-to-text model, one "
                    "prompt per granularity, into a metadata.jsonl that folder: and hf: read. Captions the data "
                    "already has are kept; images already in --out are skipped, so a rerun resumes.")
    parser.add_argument("--data", required=True, help="data spec with image files: folder:PATH, DIR, hf:DIR")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a data source option (repeatable), e.g. caption_columns={short: alt}")
    parser.add_argument("--out", required=True,
                        help="output .jsonl (DIR/metadata.jsonl makes folder:DIR and hf:DIR read the captions); "
                             "an existing one is resumed")
    parser.add_argument("--captioner", required=True, metavar="MODEL",
                        help="save_pretrained directory or hub id of an image-text-to-text model")
    parser.add_argument("--granularities", default=None, metavar="short,medium,long",
                        help="which captions to generate (default: every one the captioner has a prompt for)")
    parser.add_argument("--prompts", action="append", default=[], metavar="FILE|short=...,long=...",
                        help="prompt per granularity, inline or a YAML/JSON file (repeatable; built in for "
                             "Florence-2, PaliGemma and chat models)")
    parser.add_argument("--overwrite-captions", action="store_true",
                        help="generate the requested granularities even where the data already has them")
    parser.add_argument("--batch-size", type=int, default=16, help="images per generate call (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="caption length limit (default 256)")
    parser.add_argument("--num-beams", type=int, default=1, help="1 = greedy (default); beam search otherwise")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                        help="model precision (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="image-decoding processes (default: up to 8)")
    parser.add_argument("--shard", default="0/1", metavar="I/N",
                        help="caption only every N-th image starting at I (one process or GPU per shard)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from distill.captioning import checked_out
    from common.lock import OutputLock

    out = checked_out(args.out)
    with OutputLock(out, beside=True):
        return _caption(args, out)


def _caption(args: argparse.Namespace, out) -> int:
    from transformers.utils import logging as transformers_logging

    from distill.captioning import (CaptionSettings, Captioner, Generation, Shard, caption_images, open_images,
                                    parse_granularities, parse_prompts, pick_device, plan, read_written,
                                    resolve_prompts)
    from distill.commands import data_options

    # Every cheap check before the model loads.
    granularities = parse_granularities(args.granularities)
    given = parse_prompts(args.prompts)
    settings = CaptionSettings(args.batch_size, args.overwrite_captions, args.num_workers, Shard.parse(args.shard))
    settings.validate()
    generation = Generation(args.max_new_tokens, args.num_beams)
    generation.validate()
    device, dtype = pick_device(args.device, args.dtype)
    written = read_written(out)  # first: it cuts a torn last line, which `folder:` would otherwise read
    dataset = open_images(args.data, data_options(args.data_option), out)

    transformers_logging.disable_progress_bar()  # weight loading; our bar counts images
    captioner = Captioner(args.captioner, device=device, dtype=dtype, generation=generation)
    prompts = resolve_prompts(captioner.model_type, captioner.chat, given, granularities)
    work = plan(dataset, out, written, tuple(prompts), settings)
    summary = caption_images(dataset, work, captioner, prompts, out, settings)
    notes = [f"{work.written} already there"]
    if work.without_file:
        notes.append(f"{work.without_file} rows without an image file skipped")
    if summary.skipped:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(summary.skipped.items()))
        notes.append(f"{sum(summary.skipped.values())} unreadable images skipped ({reasons})")
    print(f"caption {out}: {summary.captioned} images captioned ({', '.join(prompts)}), {', '.join(notes)}")
    return 0
