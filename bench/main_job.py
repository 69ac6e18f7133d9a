"""The main job as a user runs it: `tipsdistill distill --out DIR` in a fresh process on the packaged teacher and
the built-in scenes; prints one JSON object (wall time, peak memory, threads, the report's scores, bootstrap
intervals and cost per model) and writes it with --out. The README's Quickstart figures come from this file, and
`tests/test_main_job.py` pins them.

Usage: python bench/main_job.py [--threads 2 1] [--work DIR] [--out bench/results/main_job.json] [--quick]
Each thread count is one run in its own process (its peak RSS is that process's alone); the first is the headline,
the others show how far the figures move with the number of threads (reduction order on the CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab import emit

SCORES = ("miou", "pixel_acc", "things_miou", "things_pixel_acc")


def machine() -> dict:
    """What decides the float reduction order besides the thread count: the CPU and the kernels torch picks."""
    import platform

    import torch

    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").is_file() else []
    return {"cpu": names[0] if names else platform.processor(), "capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__}


QUICK = ("train.max_steps=2", "train.batch_size=8")  # the smoke run of the suite: the wiring, not the figures


def run_job(out: Path, threads: int, overrides: tuple[str, ...] = ()) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "distill.cli", "distill", "--out", str(out), *overrides], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    printed = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS, not the largest of all children
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"error: the main job exited with {child.returncode}:\n{printed[-2000:]}")
    wall = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    return {"threads": threads, "wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024),
            "models": {name: {m: scores[m] for m in SCORES} for name, scores in report["models"].items()},
            "per_class_iou": {name: scores["per_class_iou"] for name, scores in report["models"].items()},
            "bootstrap": report["bootstrap"], "cost": report.get("cost"), "baselines": report["baselines"],
            # the printout as a user sees it, without this machine's paths (reports are shared)
            "dataset": report["dataset"], "printed": printed.replace(str(out), "runs/default")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument("--quick", action="store_true", help="2 training steps: a smoke test")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="tipsdistill-main-job-"))
    runs = [run_job(work / f"threads{threads}", threads, QUICK if args.quick else ())
            for threads in args.threads]
    first = runs[0]["models"]
    result = {"command": "tipsdistill distill --out runs/default", "quick": args.quick, "machine": machine(), "runs": runs,
              "moved_by_threads": {f"{r['threads']} vs {runs[0]['threads']} threads": {
                  name: {m: r["models"][name][m] - first[name][m] for m in SCORES} for name in first}
                  for r in runs[1:]}}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
