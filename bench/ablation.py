"""The micro lab: TIPSv2's claims and this toolkit's distillation choices as paired comparisons over seeds, on
the built-in scenes; prints one JSON object (and writes it, a markdown table and a PNG with `--out`).

Same seed = same data order, crops, masks, caption draws and initialisation in both arms of a comparison.

Pretraining arms (each a teacher pretrained from scratch with `recipes/micro-teacher.yaml`):
  ibot++            patch loss on all tokens, head-only EMA, multi-granularity captions (the TIPSv2 recipe)
  ibot              patch loss on masked tokens only                  paper: iBOT++ is +14.1 mIoU on ADE150
  contrastive_only  alpha = beta = 0 (no self-distillation)
  full_ema          EMA backbone + heads                              paper: head-only matches full EMA
  short_captions    CLS2 sees the alt-text only                       paper: multi-granularity captions help
Distillation arms (each a student distilled from that seed's ibot++ teacher, as the default job does):
  all_tokens        loss on CLS1, CLS2 and every patch token, 0.9 cosine + 0.1 smooth-L1, caption contrastive
  masked_tokens     patch loss on masked tokens only
  cls_only          no patch loss (CLS1 and CLS2 only)
  no_contrastive    caption contrastive weight 0 (the text tower stays the teacher's)
  cosine            cosine distance only
and the student against its own teacher (paper: students beat their g/14 teacher on zero-shot segmentation).

Usage: python bench/ablation.py [--seeds 0 1 2 3 4] [--pretrain-steps N] [--student-steps M] [--limit K]
                                [--work DIR] [--out bench/results/ablation.json] [--quick]
A finished run is never redone with the same --work directory; `--quick` is the smoke test run by the suite.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab import RETRIEVAL_METRICS, SEG_METRICS, Lab, markdown, paired, plot_intervals, summary, verdict

PRETRAIN_ARMS = {
    "ibot++": [],
    "ibot": ["loss.patch_tokens=masked"],
    "contrastive_only": ["pretrain.alpha=0", "pretrain.beta=0"],
    "full_ema": ["pretrain.ema=full"],
    "short_captions": ["loss.contrastive.caption_weights={short: 1.0}"],
}
DISTILL_ARMS = {
    "all_tokens": [],
    "masked_tokens": ["loss.patch_tokens=masked"],
    "cls_only": ["loss.patch_weight=0"],
    "no_contrastive": ["loss.contrastive.weight=0"],
    "cosine": ["loss.distance=cosine"],
}
# (claim, reference arm, other arm, expected sign of reference - other, the paper's statement)
CLAIMS = [
    ("iBOT++ vs iBOT", "ibot++", "ibot", "positive", "iBOT++ +14.1 mIoU zero-shot on ADE150 (TIPSv2)"),
    ("iBOT++ vs contrastive only", "ibot++", "contrastive_only", "positive", "self-distillation helps dense tasks"),
    ("head-only vs full EMA", "ibot++", "full_ema", "equal", "same quality, ~42% fewer trainable parameters"),
    ("multi-granularity vs short captions", "ibot++", "short_captions", "positive",
     "multi-granularity captions help (TIPSv2)"),
    ("all tokens vs masked tokens", "all_tokens", "masked_tokens", "positive", "(this toolkit's default)"),
    ("all tokens vs CLS only", "all_tokens", "cls_only", "positive", "(this toolkit's default)"),
    ("with vs without caption contrastive", "all_tokens", "no_contrastive", "positive", "(this toolkit's default)"),
    ("0.9 cosine + 0.1 smooth-L1 vs cosine", "all_tokens", "cosine", "positive", "(RADIO's mix, this default)"),
    ("student vs its teacher", "all_tokens", "ibot++", "positive",
     "distilled students beat their teacher (L/14 24.7 vs g/14 17.8 ADE150 mIoU)"),
]
QUICK = ["student.name=tipsv2-nano", "student.image_size=32", "data.options={size: 32, length: 32}",
         "train.batch_size=8", "train.log_every=1"]
QUICK_PRETRAIN = ["pretrain.num_prototypes=16", "pretrain.head_hidden=16", "pretrain.head_bottleneck=8"]


def run_arms(lab: Lab, seeds: list[int], pretrain_steps: int, student_steps: int) -> dict[str, list[dict]]:
    arms: dict[str, list[dict]] = {}
    for seed in seeds:
        for arm, overrides in PRETRAIN_ARMS.items():
            record = lab.pretrain(f"{arm}-seed{seed}", [*overrides, f"seed={seed}", f"train.max_steps={pretrain_steps}"])
            arms.setdefault(arm, []).append(record)
        teacher = lab.records[f"ibot++-seed{seed}"]["model"]
        for arm, overrides in DISTILL_ARMS.items():
            record = lab.distill(f"{arm}-seed{seed}", teacher, [*overrides, f"seed={seed}",
                                                               f"train.max_steps={student_steps}"])
            arms.setdefault(arm, []).append(record)
    return arms


def ema_cost(quick: bool) -> dict:
    """EMA parameters, peak memory and step time of head-only vs full EMA, each in a fresh process (peak RSS
    is per process), alternated (twice, once when quick) so a noisy machine hits both modes alike."""
    runs: dict[str, list[dict]] = {"heads": [], "full": []}
    for _ in range(1 if quick else 2):
        for mode in runs:
            out = subprocess.run([sys.executable, __file__, "--ema-probe", mode, *(["--quick"] if quick else [])],
                                 capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {mode: min(r["step_seconds"] for r in rs) for mode, rs in runs.items()}
    return {mode: {"ema_params": rs[0]["ema_params"], "trainable_params": rs[0]["trainable_params"],
                   "peak_rss_mib": max(r["peak_rss_mib"] for r in rs), "step_seconds_best": best[mode]}
            for mode, rs in runs.items()} | {"full_over_heads_step_time": best["full"] / best["heads"]}


def ema_probe(mode: str, quick: bool) -> dict:
    """One pretraining task of the micro-teacher recipe: its parameter split and 10 timed training steps."""
    import torch

    from distill.config import load_recipe
    from distill.data import Draws, MaskConfig, build_dataset, make_dataloader
    from distill.tasks.pretrain_task import PretrainTask
    from students import build_student
    from teachers import load_teacher

    torch.manual_seed(0)
    recipe = load_recipe("micro-teacher", [f"pretrain.ema={mode}", *(QUICK + QUICK_PRETRAIN if quick else [])])
    student = build_student(recipe.student.name, text=True, image_size=recipe.student.image_size,
                            tokenizer=load_teacher("micro").tokenizer)
    task = PretrainTask(student, recipe.pretrain, recipe.loss)
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)
    size, p = recipe.student.image_size, recipe.pretrain
    draws = Draws(MaskConfig(student.patch_size, recipe.loss.mask_ratio, recipe.loss.mask_probability),
                  dict(recipe.loss.contrastive.caption_weights), (p.global_crop, *[p.local_crop] * p.local_crops))
    loader = make_dataloader(build_dataset("scenes", size=size, length=recipe.train.batch_size * 11),
                             batch_size=recipe.train.batch_size, student_size=size, draws=draws)
    times = []
    for step, batch in enumerate(loader):
        start = time.perf_counter()
        task(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        task.after_optimizer_step(step + 1, 100)
        times.append(time.perf_counter() - start)
    return {"ema_params": sum(q.numel() for q in task.parameters() if not q.requires_grad),
            "trainable_params": sum(q.numel() for q in task.parameters() if q.requires_grad),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "step_seconds": sorted(times[1:])[len(times[1:]) // 2]}


def claims(arms: dict[str, list[dict]]) -> list[dict]:
    out = []
    for name, ref, other, expect, paper in CLAIMS:
        metrics = SEG_METRICS + (RETRIEVAL_METRICS if "captions" in name else ())
        for metric in metrics:
            stats = paired([r[metric] for r in arms[ref]], [r[metric] for r in arms[other]])
            out.append({"claim": name, "metric": metric, "reference": ref, "other": other, "paper": paper,
                        **stats, "verdict": verdict(stats["ci95"], expect)})
    return out


def report(result: dict) -> str:
    rows = [[c["claim"], c["metric"], f"{c['mean']:+.2f}", f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]",
             " ".join(f"{d:+.1f}" for d in c["differences"]), c["verdict"], c["paper"]]
            for c in result["claims"]]
    table = markdown(rows, ["comparison (reference - other)", "metric", "mean", "95% CI", "per seed", "verdict",
                            "claim"])
    arms = markdown([[arm, *(f"{s[m]['mean']:.1f} ± {s[m]['std']:.1f}" if m in s else "-"
                             for m in (*SEG_METRICS, *RETRIEVAL_METRICS))] for arm, s in result["arms"].items()],
                    ["arm", *SEG_METRICS, *RETRIEVAL_METRICS])
    return f"{arms}\n\n{table}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--pretrain-steps", type=int, default=400,
                        help="teacher pretraining steps per arm (400: 5 seeds take about two CPU-hours)")
    parser.add_argument("--student-steps", type=int, default=300, help="distillation steps per student (the default job's)")
    parser.add_argument("--limit", type=int, default=256, help="held-out scenes scored per model")
    parser.add_argument("--work", type=Path, help="run directory, reused to continue (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write JSON here, and the .md table and .png beside it")
    parser.add_argument("--quick", action="store_true", help="2 seeds, nano models, a few steps: a smoke test")
    parser.add_argument("--ema-probe", choices=["heads", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ema_probe:
        print(json.dumps(ema_probe(args.ema_probe, args.quick)))
        return 0
    if args.quick:
        args.seeds, args.pretrain_steps, args.student_steps, args.limit = args.seeds[:2], 3, 2, 4
    lab = Lab(args.work or Path(tempfile.mkdtemp(prefix="tipsdistill-lab-")), args.limit, QUICK if args.quick else [],
              QUICK_PRETRAIN if args.quick else [], "scenes:size=32" if args.quick else "scenes")
    arms = run_arms(lab, args.seeds, args.pretrain_steps, args.student_steps)
    result = {
        "setup": {"seeds": args.seeds, "pretrain_steps": args.pretrain_steps, "student_steps": args.student_steps,
                  "eval": f"zero-shot segmentation and retrieval on {args.limit} held-out scenes ({lab.dataset})",
                  "quick": args.quick},
        "baselines": json.loads((lab.work / "baselines.json").read_text()),
        "arms": {arm: {m: summary([r[m] for r in rs]) for m in (*SEG_METRICS, *RETRIEVAL_METRICS, "seconds")
                       if m in rs[0]} for arm, rs in arms.items()},
        "claims": claims(arms),
        "ema_cost": ema_cost(args.quick),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".md").write_text(report(result))
        shown = [c for c in result["claims"] if c["metric"] == "miou"]
        plot_intervals(args.out.with_suffix(".png"), [c["claim"] for c in shown], [c["mean"] for c in shown],
                       [c["ci95"] for c in shown], "mIoU difference, reference - other (points, 95% CI)",
                       f"micro lab, {len(args.seeds)} seeds, held-out scenes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
