"""The micro lab's several-teachers comparison (AM-RADIO, arXiv 2312.06709): is a student distilled from two teachers
at once as good as each single-teacher student on that teacher's strength? Prints one JSON object (and writes it and
a markdown table with `--out`).

Teachers: `tips`, the packaged micro TIPSv2 teacher (`micro`: captions, text-aligned patch tokens), and `ssl`, the
packaged `micro-ssl`: the same architecture pretrained with `recipes/micro-teacher.yaml`, the caption term's weight
set to 0 and 800 steps (a third of the tips teacher's, for the CPU budget): DINO + iBOT++ self-distillation only, a
DINOv2-style teacher whose text tower is untrained (`distill/default_job.py` says how to regenerate it). Arms, one student per seed
(the default job's pico student and recipe, `recipes/micro.yaml`; same seed = same data order, crops, masks,
caption draws and initialisation):
  tips   distilled from tips alone (the default job)
  ssl    distilled from ssl alone, without the caption term (ssl has no trained text tower)
  both   `teachers: [tips, ssl]`, weight 1 each, the caption term on the tips side
Scores on held-out scenes, which choose nothing: zero-shot segmentation in the tips space (`STUDENT@teacher`, the
primary's heads and text tower; not defined for the ssl arm), and the linear-segmentation and depth probes on the
student's own backbone tokens (what the student is exported as). Every comparison is paired over seeds, Holm-corrected
over the family (lab.py); the expectations are stated here, before any run (`CLAIMS`).

Usage: python bench/multi_teacher.py [--seeds 0 .. 4] [--arms tips ssl both] [--work DIR]
                                     [--out bench/results/multi_teacher.json] [--quick]
A finished run is never redone with the same --work directory; several processes may share one with disjoint arms
and a last run over all arms collects them and reports. `--quick` is the smoke
test run by the suite.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from distill.default_job import DEFAULT_OVERRIDES, EVAL_DATASET
from distill.eval import evaluate
from distill.eval.models import TEACHER_SPACE
from distill.recipe_loader import load_recipe
from lab import Lab, emit, markdown, paired, summary, with_verdicts

TIPS, SSL = "micro", "micro-ssl"
PROBE_DATASET = "scenes"  # the probes train on the scenes' train split and are scored on their held-out split
PROBE_LIMIT = 256  # scenes per split, as the evaluation page's probe table


ARMS = {
    "tips": [f"teacher.spec={TIPS}"],
    "ssl": [f"teacher.spec={SSL}", "loss.contrastive.kind=none"],
    "both": [f"teachers=[{{name: tips, spec: {TIPS}}}, {{name: ssl, spec: {SSL}}}]"],
}


# (metric, reference arm, other arm, expected, the statement tested). Every tested metric is in percentage points,
# higher better, so lab.MARGIN (2 points) is one equality margin for all: depth by delta1 (the share of pixels within
# 1.25x of the true depth); its rmse is reported beside it.
CLAIMS = [
    ("zeroshot_miou", "both", "tips", "equal", "the second teacher costs no text alignment"),
    ("linseg_miou", "both", "tips", "positive", "the ssl teacher adds dense strength"),
    ("depth_delta1", "both", "tips", "positive", "the ssl teacher adds depth"),
    ("linseg_miou", "both", "ssl", "equal", "two teachers keep the ssl student's dense strength"),
    ("depth_delta1", "both", "ssl", "equal", "two teachers keep the ssl student's depth"),
]
METRICS = ("zeroshot_miou", "linseg_miou", "depth_delta1", "depth_rmse")
QUICK = ["train.max_steps=2", "train.batch_size=8", "data.options={size: 64, length: 32}", "train.log_every=1"]


class MultiTeacherLab(Lab):
    probe_limit: int = PROBE_LIMIT
    probe_iterations: int | None = None  # None: the scenes' protocol

    def scores(self, spec: str, name: str, zero_shot: str | None) -> dict:
        """Probes on `spec` (the backbone); zero-shot segmentation on `zero_shot` (a text-aligned space) if given."""
        scores = {}
        if zero_shot is not None:
            seg = evaluate({"model": zero_shot}, "zeroshot-seg", self.dataset, self.work / f"eval-{name}", quiet=True,
                           limit=self.eval_limit, overlays=0, cost=False)
            scores["zeroshot_miou"] = seg["models"]["model"]["miou"]
        probe = dict(limit=self.probe_limit, overlays=0, cost=False, quiet=True,
                     **({"iterations": self.probe_iterations} if self.probe_iterations else {}))
        lin = evaluate({"model": spec}, "linear-seg", PROBE_DATASET, self.work / f"linseg-{name}", **probe)
        depth = evaluate({"model": spec}, "depth", PROBE_DATASET, self.work / f"depth-{name}", **probe)
        scores["linseg_miou"] = lin["models"]["model"]["miou"]
        scores["depth_delta1"] = depth["models"]["model"]["delta1"]
        scores["depth_rmse"] = depth["models"]["model"]["rmse"]
        return scores

    def student(self, arm: str, overrides: list[str], seed: int) -> dict:
        name = f"{arm}-seed{seed}"
        if name in self.records:
            return self.records[name]
        start = time.perf_counter()
        recipe = load_recipe("micro", [*DEFAULT_OVERRIDES, *overrides, f"seed={seed}", *self.quick])
        student = self._train(recipe, name)
        zero_shot = None if arm == "ssl" else f"{student}{TEACHER_SPACE}"
        return self._record({"name": name, "model": str(student), **self.scores(str(student), name, zero_shot),
                             "seconds": time.perf_counter() - start})

    def teacher(self, name: str, spec: str, zero_shot: bool) -> dict:
        key = f"teacher-{name}"
        if key in self.records:
            return self.records[key]
        return self._record({"name": key, "model": spec, **self.scores(spec, key, spec if zero_shot else None)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--work", type=Path, default=Path("runs/lab-multi-teacher"))
    parser.add_argument("--arms", nargs="+", choices=["tips", "ssl", "both"], default=["tips", "ssl", "both"],
                        help="train and score these arms only (a report needs all three)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 steps, 2 seeds, 8 scenes")
    args = parser.parse_args(argv)
    seeds = [0, 1] if args.quick else args.seeds
    lab = MultiTeacherLab(args.work, eval_limit=8 if args.quick else 1024, quick=QUICK if args.quick else [])
    if args.quick:
        lab.probe_limit, lab.probe_iterations = 8, 2
    runs = {arm: [lab.student(arm, overrides, seed) for seed in seeds] for arm, overrides in ARMS.items()
            if arm in args.arms}
    if len(runs) < len(ARMS):
        return 0
    teachers = {"tips": lab.teacher("tips", TIPS, zero_shot=True), "ssl": lab.teacher("ssl", SSL, zero_shot=False)}
    results = {arm: {m: summary([r[m] for r in records]) for m in METRICS if m in records[0]}
               for arm, records in runs.items()}
    claims = []
    for metric, reference, other, expect, statement in CLAIMS:
        claims.append({"claim": f"{reference} vs {other}", "metric": metric, "expect": expect, "statement": statement,
                       **paired([r[metric] for r in runs[reference]], [r[metric] for r in runs[other]])})
    result = {
        "setup": {"seeds": seeds, "student_steps": load_recipe("micro", lab.quick).train.max_steps,
                  "teachers": {"tips": TIPS, "ssl": SSL}, "arms": ARMS, "quick": args.quick,
                  "eval": {"zeroshot": f"zero-shot segmentation, {lab.eval_limit} held-out scenes ({EVAL_DATASET})",
                           "probes": f"linear-seg and depth probes, {lab.probe_limit} scenes per split ({PROBE_DATASET})",
                           "student_spaces": "zero-shot: STUDENT@teacher (the tips heads); probes: the backbone"}},
        "teachers": {name: {m: record[m] for m in METRICS if m in record} for name, record in teachers.items()},
        "arms": results,
        "claims": with_verdicts(claims),
    }
    emit(result, args.out)
    if args.out:
        rows = [[arm, *(f"{results[arm][m]['mean']:.2f} ± {results[arm][m]['std']:.2f}" if m in results[arm] else "-"
                        for m in METRICS)] for arm in results]
        rows += [[f"teacher {name}", *(f"{t[m]:.2f}" if m in t else "-" for m in METRICS)]
                 for name, t in result["teachers"].items()]
        args.out.with_suffix(".md").write_text(markdown(rows, ["model", *METRICS]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
