"""The packaged micro teacher's pretraining curve: zero-shot segmentation on the VALIDATION scenes of teachers
pretrained with `recipes/micro-teacher.yaml` for several step counts (each a full run with its own cosine
schedule), and of a student distilled from each with the default job's settings; prints one JSON object (with
`--out`, also a PNG). The packaged step count is chosen here: the best validation mIoU (the paired bootstrap
intervals of the points' differences say whether its neighbours are distinguishable). Held-out scenes are never
read.

Usage: python bench/teacher_curve.py [--steps 1200 2400 4800] [--seed 0] [--limit 1024] [--no-students]
                                     [--reuse STEPS=MODEL_DIR ...] [--work DIR]
                                     [--out bench/results/teacher_curve.json] [--quick]
A finished run is never redone with the same --work directory; `--reuse` names an earlier run's model for a
point (e.g. the packaged teacher for the step count it was trained with) instead of training it again.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ablation import QUICK, QUICK_PRETRAIN
from lab import SEG_METRICS, Lab, emit

from distill.eval import evaluate


def plot_curve(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    steps = [p["steps"] for p in result["points"]]
    for who, style in (("teacher", "o-"), ("student", "s--")):
        values = [p[who]["miou"] for p in result["points"] if who in p]
        if values:
            ax.plot(steps[: len(values)], values, style, label=f"{who} mIoU")
    base = result["baselines"]
    ax.axhline(base["majority_class_miou"], color="grey", lw=1, ls=":", label="majority class everywhere")
    ax.axhline(base["per_image_majority_miou"], color="grey", lw=1, ls="-.", label="per-image majority (oracle)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.set_xlabel("teacher pretraining steps (batch 32)")
    ax.set_ylabel("zero-shot mIoU, validation scenes (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_reuse(items: list[str]) -> dict[int, str]:
    out = {}
    for item in items:
        steps, sep, model = item.partition("=")
        if not sep or not steps.isdigit() or not model:
            raise SystemExit(f"error: --reuse {item!r} is invalid; expected STEPS=MODEL_DIR")
        out[int(steps)] = model
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1200, 2400, 4800])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--student-steps", type=int, default=300, help="the default job's (the micro recipe's)")
    parser.add_argument("--limit", type=int, default=1024, help="validation scenes scored per model")
    parser.add_argument("--no-students", action="store_true", help="teachers only")
    parser.add_argument("--reuse", nargs="+", default=[], metavar="STEPS=MODEL_DIR",
                        help="an earlier run's model for that point, not retrained")
    parser.add_argument("--work", type=Path, help="run directory, reused to continue (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write JSON here and the PNG beside it")
    parser.add_argument("--quick", action="store_true", help="nano models, a few steps: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.student_steps, args.limit = [2, 4], 2, 4
    reuse = parse_reuse(args.reuse)
    dataset = f"scenes:size=32,length={args.limit},split=validation" if args.quick else \
        f"scenes:length={args.limit},split=validation"
    lab = Lab(args.work or Path(tempfile.mkdtemp(prefix="tipsdistill-curve-")), args.limit,
              QUICK if args.quick else [], QUICK_PRETRAIN if args.quick else [], dataset)
    teachers = {steps: reuse.get(steps) or lab.pretrain(f"teacher-{steps}-seed{args.seed}",
                                                        [f"seed={args.seed}", f"train.max_steps={steps}"],
                                                        retrieval=False)["model"] for steps in args.steps}
    # One evaluation of every teacher: the bootstrap intervals of their differences are paired (same scenes).
    report = evaluate({str(steps): model for steps, model in teachers.items()}, "zeroshot-seg", dataset,
                      lab.work / "eval-teachers", quiet=True, overlays=0)
    points = []
    for steps in args.steps:
        point = {"steps": steps, "teacher": {m: report["models"][str(steps)][m] for m in SEG_METRICS},
                 "teacher_miou_ci95": report["bootstrap"]["ci95"][str(steps)]["miou"],
                 "model": "reused" if steps in reuse else "trained"}
        if not args.no_students:
            student = lab.distill(f"student-{steps}-seed{args.seed}", teachers[steps],
                                  [f"seed={args.seed}", f"train.max_steps={args.student_steps}"])
            point["student"] = {m: student[m] for m in SEG_METRICS}
        points.append(point)
    chosen = max(points, key=lambda p: p["teacher"]["miou"])["steps"]
    result = {"setup": {"seed": args.seed, "student_steps": args.student_steps, "quick": args.quick,
                        "eval": f"zero-shot segmentation on {args.limit} validation scenes ({dataset})",
                        "reused": {str(k): Path(v).name for k, v in reuse.items()},
                        "rule": "the best teacher mIoU on validation"},
              "baselines": report["baselines"], "bootstrap": report["bootstrap"]["differences"], "points": points,
              "chosen_steps": chosen}
    emit(result, args.out)
    if args.out:
        plot_curve(args.out.with_suffix(".png"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
