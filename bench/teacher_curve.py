"""The packaged micro teacher's pretraining curve: zero-shot segmentation of teachers pretrained with
`recipes/micro-teacher.yaml` for several step counts (each a full run with its own cosine schedule), and of a
student distilled from each with the default job's settings; prints one JSON object (with `--out`, also a PNG).

Usage: python bench/teacher_curve.py [--steps 150 300 600 1200 2400 4800] [--seed 0] [--limit 256] [--no-students]
                                     [--work DIR] [--out bench/results/teacher_curve.json] [--quick]
A finished run is never redone with the same --work directory.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ablation import QUICK, QUICK_PRETRAIN
from lab import SEG_METRICS, Lab


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
    ax.set_ylabel("zero-shot mIoU, held-out scenes (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[150, 300, 600, 1200, 2400, 4800])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--student-steps", type=int, default=300, help="the default job's (the micro recipe's)")
    parser.add_argument("--limit", type=int, default=256, help="held-out scenes scored per model")
    parser.add_argument("--no-students", action="store_true", help="teachers only")
    parser.add_argument("--work", type=Path, help="run directory, reused to continue (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write JSON here and the PNG beside it")
    parser.add_argument("--quick", action="store_true", help="nano models, a few steps: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.student_steps, args.limit = [2, 4], 2, 4
    lab = Lab(args.work or Path(tempfile.mkdtemp(prefix="tipsdistill-curve-")), args.limit,
              QUICK if args.quick else [], QUICK_PRETRAIN if args.quick else [],
              "scenes:size=32" if args.quick else "scenes")
    points = []
    for steps in args.steps:
        teacher = lab.pretrain(f"teacher-{steps}-seed{args.seed}", [f"seed={args.seed}", f"train.max_steps={steps}"],
                               retrieval=False)
        point = {"steps": steps, "teacher": {m: teacher[m] for m in SEG_METRICS}, "seconds": teacher["seconds"]}
        if not args.no_students:
            student = lab.distill(f"student-{steps}-seed{args.seed}", teacher["model"],
                                  [f"seed={args.seed}", f"train.max_steps={args.student_steps}"])
            point["student"] = {m: student[m] for m in SEG_METRICS}
        points.append(point)
    best = max(points, key=lambda p: p["teacher"]["miou"])
    result = {"setup": {"seed": args.seed, "student_steps": args.student_steps, "quick": args.quick,
                        "eval": f"zero-shot segmentation on {args.limit} held-out scenes ({lab.dataset})"},
              "baselines": json.loads((lab.work / "baselines.json").read_text()), "points": points,
              "best_teacher_steps": best["steps"]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        plot_curve(args.out.with_suffix(".png"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
