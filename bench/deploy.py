"""The Deploy table: each micro student as a team ships it (PyTorch, ONNX fp32, ONNX int8) beside its teacher, on
one CPU thread: parameters, GFLOPs per image, images/s and held-out zero-shot mIoU, in one evaluation.

Each student is distilled by its recipe with 2 threads in a fresh process (the main job's setting, so the ViT
student is the main job's student), exported with `tipsdistill export --format onnx --with-heads` (and
`--quantize int8`: onnxruntime's dynamic quantisation), and every model is read in the teacher's space
(`DIR@teacher`, `onnx:DIR@teacher`: the students have no text tower of their own) by one `tipsdistill eval` run
with OMP_NUM_THREADS=1 on the main job's 1024 held-out scenes. The int8 drop and the speed-ups are differences
and ratios within that one run; the bootstrap intervals are the report's, paired over images, each model's
difference from the first student (the ViT), so the convnet's gap, the teacher's and the int8 drop each come
with an interval. Nothing was tuned on these numbers: the convnet's shape is its recipe's, fixed before the run.

Usage: python bench/deploy.py [--students vit convnet] [--work DIR] [--out bench/results/deploy.json] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from lab import emit
from main_job import machine

from distill.default_job import DEFAULT_OVERRIDES, EVAL_DATASET, TEACHER

RECIPES = {"vit": "micro", "convnet": "micro-convnet"}
TRAIN_THREADS, EVAL_THREADS = 2, 1
QUICK_TRAIN = ("train.max_steps=2", "train.batch_size=8")
QUICK_DATASET = "scenes:length=8"
COST = ("vision_params", "text_params", "resolution", "gflops_per_image", "images_per_s")


def _cli(args: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "distill.cli", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: tipsdistill {' '.join(args[:1])} exited with {done.returncode}:\n{done.stderr[-2000:]}")


def _student(work: Path, kind: str, quick: bool) -> dict[str, str]:
    """Train one student and export it twice; its three model specs, read in the teacher's space."""
    run = work / kind
    if not (run / "student").is_dir():
        _cli(["distill", "--recipe", RECIPES[kind], *DEFAULT_OVERRIDES, *(QUICK_TRAIN if quick else ()),
              "--out", str(run)], TRAIN_THREADS)
    specs = {f"{kind}": f"{run / 'student'}@teacher"}
    for precision, extra in (("fp32", []), ("int8", ["--quantize", "int8"])):
        out = run / f"onnx-{precision}"
        if not out.is_dir():
            _cli(["export", str(run / "student"), "--format", "onnx", "--with-heads", "--out", str(out), *extra],
                 TRAIN_THREADS)
        specs[f"{kind}-onnx-{precision}"] = f"onnx:{out}@teacher"
    return specs


def _row(name: str, report: dict) -> dict:
    _, _, precision = name.partition("-onnx-")
    row = {"runtime": "onnxruntime" if precision else "pytorch", "precision": precision or "fp32",
           "miou": report["models"][name]["miou"], **{k: report["cost"][name].get(k) for k in COST}}
    bootstrap = report.get("bootstrap") or {}
    row["miou_ci95"] = bootstrap.get("ci95", {}).get(name, {}).get("miou")
    versus = next((d["miou"] for pair, d in bootstrap.get("differences", {}).items()
                   if pair.startswith(f"{name} - ")), None)
    if versus:
        row["minus_reference_miou"] = versus
    return row


def _ratios(rows: dict, students: list[str]) -> dict:
    summary = {}
    for kind in students:
        torch_row, fp32, int8 = rows[kind], rows[f"{kind}-onnx-fp32"], rows[f"{kind}-onnx-int8"]
        summary[kind] = {
            "int8_minus_fp32_miou": int8["miou"] - fp32["miou"],
            "onnx_fp32_minus_pytorch_miou": fp32["miou"] - torch_row["miou"],
            "int8_speedup_over_onnx_fp32": int8["images_per_s"] / fp32["images_per_s"],
            "onnx_fp32_speedup_over_pytorch": fp32["images_per_s"] / torch_row["images_per_s"],
            "teacher_speedup": torch_row["images_per_s"] / rows["teacher"]["images_per_s"],
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temp dir); rerun to reuse them")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument("--quick", action="store_true", help="2 training steps, 8 scenes: a smoke test")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="tipsdistill-deploy-"))
    models = {}
    for kind in args.students:
        models.update(_student(work, kind, args.quick))
    models["teacher"] = TEACHER
    dataset = QUICK_DATASET if args.quick else EVAL_DATASET
    evaluation = work / "eval"
    _cli(["eval", *(f"--model={name}={spec}" for name, spec in models.items()), "--task", "zeroshot-seg",
          "--dataset", dataset, "--overlays", "0", "--out", str(evaluation)], EVAL_THREADS)
    report = json.loads((evaluation / "report.json").read_text())
    rows = {name: _row(name, report) for name in models}
    emit({"quick": args.quick, "machine": machine(), "train_threads": TRAIN_THREADS, "eval_threads": EVAL_THREADS,
          "dataset": dataset, "reference": next(iter(models)), "batch_size": next(iter(report["cost"].values()))["batch_size"],
          "recipes": {kind: RECIPES[kind] for kind in args.students}, "rows": rows,
          "summary": _ratios(rows, args.students)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
