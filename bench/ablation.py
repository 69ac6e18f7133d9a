"""The micro lab: TIPSv2's claims and this toolkit's distillation choices as paired comparisons over seeds, on
the built-in scenes; prints one JSON object (and writes it, a markdown table and a PNG with `--out`).

Same seed = same data order, crops, masks, caption draws and initialisation in both arms of a comparison. Every
verdict is Holm-corrected over the lab's whole family of tests (ALPHA = 0.05 family-wise); an "equal quality"
claim needs a TOST inside +-MARGIN (lab.py). Scores are on held-out scenes, which choose nothing.

Pretraining arms (each a teacher pretrained from scratch with `recipes/micro-teacher.yaml`, one per teacher seed):
  ibot++            patch loss on all tokens, head-only EMA, multi-granularity captions (the TIPSv2 recipe)
  ibot              patch loss on masked tokens only                  paper: iBOT++ is +14.1 mIoU on ADE150
  contrastive_only  alpha = beta = 0 (no self-distillation)
  full_ema          EMA backbone + heads                              paper: head-only matches full EMA
  short_captions    CLS2 sees the alt-text only                       paper: multi-granularity captions help
Distillation arms (each a student distilled from the packaged teacher as the default job does, one per student
seed; scored in the teacher's space, `STUDENT@teacher`):
  all_tokens        loss on CLS1, CLS2 and every patch token, 0.9 cosine + 0.1 smooth-L1, caption contrastive
  masked_tokens     patch loss on masked tokens only (averaged over the masked images: the same patch weight)
  cls_only          no patch loss (CLS1 and CLS2 only)
  no_contrastive    caption contrastive weight 0
  cosine            cosine distance only
and the student against its teacher (paper: students beat their g/14 teacher on zero-shot segmentation).

Usage: python bench/ablation.py [--student-seeds 0 .. 7] [--teacher-seeds 0 .. 4 | --pretrain-from JSON]
                                [--pretrain-steps N] [--student-steps M] [--limit K] [--work DIR]
                                [--out bench/results/ablation.json] [--quick]
`--pretrain-from` reads the pretraining arms' per-seed scores from an earlier lab's JSON instead of retraining
them (their setup is copied into this one's). A finished run is never redone with the same --work directory;
several processes may share one --work directory with disjoint seeds, and a last run over all seeds collects
them. `--quick` is the smoke test run by the suite.
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

from distill.recipe_loader import load_recipe
from lab import (ALPHA, MARGIN, RETRIEVAL_METRICS, SEG_METRICS, Lab, emit, markdown, paired, plot_intervals, summary,
                 with_verdicts)

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
TEACHER = "micro"  # the packaged teacher every student of the lab distils from
# (claim, reference arm, other arm, expected: "positive" = reference better, or "equal"; the paper's statement)
PRETRAIN_CLAIMS = [
    ("iBOT++ vs iBOT", "ibot++", "ibot", "positive", "iBOT++ +14.1 mIoU zero-shot on ADE150 (TIPSv2)"),
    ("iBOT++ vs contrastive only", "ibot++", "contrastive_only", "positive", "self-distillation helps dense tasks"),
    ("head-only vs full EMA", "ibot++", "full_ema", "equal", "same quality, ~42% fewer trainable parameters"),
    ("multi-granularity vs short captions", "ibot++", "short_captions", "positive",
     "multi-granularity captions help (TIPSv2)"),
]
DISTILL_CLAIMS = [
    ("all tokens vs masked tokens", "all_tokens", "masked_tokens", "positive", "(this toolkit's default)"),
    ("all tokens vs CLS only", "all_tokens", "cls_only", "positive", "(this toolkit's default)"),
    ("with vs without caption contrastive", "all_tokens", "no_contrastive", "positive", "(this toolkit's default)"),
    ("0.9 cosine + 0.1 smooth-L1 vs cosine", "all_tokens", "cosine", "positive", "(RADIO's mix, this default)"),
    ("student vs its teacher", "all_tokens", "teacher", "positive",
     "distilled students beat their teacher (L/14 24.7 vs g/14 17.8 ADE150 mIoU)"),
]
QUICK = ["student.name=tipsv2-nano", "student.image_size=32", "data.options={size: 32, length: 32}",
         "train.batch_size=8", "train.log_every=1"]
QUICK_PRETRAIN = ["pretrain.num_prototypes=16", "pretrain.head_hidden=16", "pretrain.head_bottleneck=8"]


def run_teachers(lab: Lab, seeds: list[int], steps: int) -> dict[str, list[dict]]:
    arms: dict[str, list[dict]] = {}
    for seed in seeds:
        for arm, overrides in PRETRAIN_ARMS.items():
            record = lab.pretrain(f"{arm}-seed{seed}", [*overrides, f"seed={seed}", f"train.max_steps={steps}"])
            arms.setdefault(arm, []).append(record)
    return arms


def run_students(lab: Lab, seeds: list[int], steps: int, teacher: str) -> dict[str, list[dict]]:
    arms: dict[str, list[dict]] = {}
    for seed in seeds:
        for arm, overrides in DISTILL_ARMS.items():
            record = lab.distill(f"{arm}-student{seed}", teacher, [*overrides, f"seed={seed}",
                                                                   f"train.max_steps={steps}"])
            arms.setdefault(arm, []).append(record)
    # One teacher for every student seed: its score is the same number in every pair.
    arms["teacher"] = [lab.teacher(teacher)] * len(seeds)
    return arms


def recorded_teachers(path: Path) -> tuple[dict[str, list[dict]], dict]:
    """The pretraining arms' per-seed scores and setup from an earlier lab's JSON."""
    earlier = json.loads(path.read_text())
    arms = {arm: [{m: earlier["arms"][arm][m]["values"][i] for m in earlier["arms"][arm] if m != "seconds"}
                  for i in range(len(earlier["arms"][arm]["miou"]["values"]))] for arm in PRETRAIN_ARMS}
    setup = {k: earlier["setup"][k] for k in ("seeds", "pretrain_steps", "eval") if k in earlier["setup"]}
    return arms, {"from": str(path), **setup, "ema_cost": earlier.get("ema_cost")}


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

    from distill.data import Draws, MaskConfig, build_dataset, make_dataloader
    from distill.data.captions import CaptionTokenizer
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
                             batch_size=recipe.train.batch_size, student_size=size, draws=draws,
                             captions=CaptionTokenizer(student.text_tokenizer, joint=True))
    times = []
    for step, batch in enumerate(loader):
        start = time.perf_counter()
        task(batch.to("cpu")).loss.backward()
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
    for group, table in (("pretraining", PRETRAIN_CLAIMS), ("distillation", DISTILL_CLAIMS)):
        for name, ref, other, expect, paper in table:
            metrics = SEG_METRICS + (RETRIEVAL_METRICS if "captions" in name and group == "pretraining" else ())
            for metric in metrics:
                stats = paired([r[metric] for r in arms[ref]], [r[metric] for r in arms[other]])
                out.append({"group": group, "claim": name, "metric": metric, "reference": ref, "other": other,
                            "expect": expect, "paper": paper, **stats})
    return with_verdicts(out)


def report(result: dict) -> str:
    rows = [[c["claim"], c["metric"], f"{c['mean']:+.2f}", f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]",
             " ".join(f"{d:+.1f}" for d in c["differences"]), f"{c['p_holm']:.3f}",
             f"{c['p_equal_holm']:.3f}" if "p_equal_holm" in c else "-", c["verdict"], c["paper"]]
            for c in result["claims"]]
    table = markdown(rows, ["comparison (reference - other)", "metric", "mean", "95% CI", "per seed",
                            "p (Holm)", "p equal (TOST, Holm)", "verdict", "claim"])
    arms = markdown([[arm, *(f"{s[m]['mean']:.1f} ± {s[m]['std']:.1f}" if m in s else "-"
                             for m in (*SEG_METRICS, *RETRIEVAL_METRICS))] for arm, s in result["arms"].items()],
                    ["arm", *SEG_METRICS, *RETRIEVAL_METRICS])
    return f"{arms}\n\n{table}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student-seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--teacher-seeds", type=int, nargs="+", default=list(range(5)))
    parser.add_argument("--pretrain-from", type=Path, help="an earlier lab's JSON: its pretraining arms, not retrained")
    parser.add_argument("--pretrain-steps", type=int, default=400,
                        help="teacher pretraining steps per arm (400: 5 seeds take about two CPU-hours)")
    parser.add_argument("--student-steps", type=int, default=None,
                        help="distillation steps per student (default: the micro recipe's, as the default job)")
    parser.add_argument("--limit", type=int, default=1024, help="held-out scenes scored per model")
    parser.add_argument("--work", type=Path, help="run directory, reused to continue (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write JSON here, and the .md table and .png beside it")
    parser.add_argument("--quick", action="store_true", help="2 seeds, nano models, a few steps: a smoke test")
    parser.add_argument("--ema-probe", choices=["heads", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ema_probe:
        print(json.dumps(ema_probe(args.ema_probe, args.quick)))
        return 0
    if args.quick:
        args.student_seeds, args.teacher_seeds = args.student_seeds[:2], args.teacher_seeds[:2]
        args.pretrain_steps, args.student_steps, args.limit = 3, 2, 4
    student_steps = args.student_steps or load_recipe("micro").train.max_steps
    lab = Lab(args.work or Path(tempfile.mkdtemp(prefix="tipsdistill-lab-")), args.limit, QUICK if args.quick else [],
              QUICK_PRETRAIN if args.quick else [],
              "scenes:size=32" if args.quick else f"scenes:length={args.limit}")
    if args.pretrain_from:
        teachers, pretraining = recorded_teachers(args.pretrain_from)
        ema = pretraining.pop("ema_cost")
    else:
        teachers = run_teachers(lab, args.teacher_seeds, args.pretrain_steps)
        pretraining = {"seeds": args.teacher_seeds, "pretrain_steps": args.pretrain_steps,
                       "eval": f"zero-shot segmentation and retrieval on {args.limit} held-out scenes ({lab.dataset})"}
        ema = ema_cost(args.quick)
    # The students of the quick test distil from its first nano teacher: the packaged one is another size.
    teacher = lab.records[f"ibot++-seed{args.teacher_seeds[0]}"]["model"] if args.quick else TEACHER
    arms = {**teachers, **run_students(lab, args.student_seeds, student_steps, teacher)}
    result = {
        "setup": {"student_seeds": args.student_seeds, "student_steps": student_steps, "teacher": teacher,
                  "eval": f"zero-shot segmentation on {args.limit} held-out scenes ({lab.dataset}); students in "
                          "their teacher's space", "pretraining": pretraining, "alpha": ALPHA,
                  "equal_margin": MARGIN, "quick": args.quick},
        "baselines": json.loads((lab.work / "baselines.json").read_text()),
        "arms": {arm: {m: summary([r[m] for r in rs]) for m in (*SEG_METRICS, *RETRIEVAL_METRICS, "seconds")
                       if m in rs[0]} for arm, rs in arms.items()},
        "claims": claims(arms),
        "ema_cost": ema,
    }
    emit(result, args.out)
    if args.out:
        args.out.with_suffix(".md").write_text(report(result))
        shown = [c for c in result["claims"] if c["metric"] == "miou"]
        plot_intervals(args.out.with_suffix(".png"), [c["claim"] for c in shown], [c["mean"] for c in shown],
                       [c["ci95"] for c in shown], "mIoU difference, reference - other (points, 95% CI)",
                       f"micro lab: {len(args.student_seeds)} student seeds, held-out scenes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
