"""What the micro-lab scripts share (`bench/ablation.py`, `bench/teacher_curve.py`): runs on the built-in
scenes through the public API, their evaluation, paired statistics, and the JSON / markdown / PNG outputs.

Every finished run is recorded in `WORK/runs.jsonl` (one JSON object per line, keyed by its name), so a lab
interrupted after hours continues where it stopped when rerun with the same `--work` directory.
"""
from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill.config import load_recipe
from distill.default_job import DEFAULT_OVERRIDES, EVAL_DATASET
from distill.eval import evaluate
from distill.run import run_training

SEG_METRICS = ("miou", "things_miou", "pixel_acc")
RETRIEVAL_METRICS = ("i2t_r1", "t2i_r1")
# Two-sided 95% quantiles of Student's t distribution by degrees of freedom (any statistics table).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042}


@dataclass
class Lab:
    work: Path
    eval_limit: int  # held-out scenes scored per model
    quick: list[str] = field(default_factory=list)  # overrides that shrink every run (the --quick smoke test)
    quick_pretrain: list[str] = field(default_factory=list)  # and pretraining runs (the `pretrain:` section)
    dataset: str = EVAL_DATASET  # held-out scenes
    records: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        self.work.mkdir(parents=True, exist_ok=True)
        log = self.work / "runs.jsonl"
        if log.is_file():
            for line in log.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.records[record["name"]] = record

    def _record(self, record: dict) -> dict:
        self.records[record["name"]] = record
        with open(self.work / "runs.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        return record

    def _train(self, recipe, name: str) -> Path:
        """A finished run left unscored by an interrupted lab is reused; an unfinished one starts over."""
        out = self.work / name
        final = out / ("model" if recipe.is_pretraining else "student")
        if final.is_dir():
            return final
        shutil.rmtree(out, ignore_errors=True)
        return run_training(recipe, out, show_progress=False)

    def pretrain(self, name: str, overrides: list[str], retrieval: bool = True) -> dict:
        """A teacher pretrained with `recipes/micro-teacher.yaml` + overrides, scored zero-shot."""
        if name in self.records:
            return self.records[name]
        start = time.perf_counter()
        model = self._train(load_recipe("micro-teacher", [*overrides, *self.quick, *self.quick_pretrain]), name)
        scores = self.score(str(model), name, retrieval)
        return self._record({"name": name, "model": str(model), **scores, "seconds": time.perf_counter() - start})

    def distill(self, name: str, teacher: str, overrides: list[str]) -> dict:
        """A student distilled from `teacher` with the default job's settings + overrides, scored zero-shot."""
        if name in self.records:
            return self.records[name]
        start = time.perf_counter()
        recipe = load_recipe("micro", [*DEFAULT_OVERRIDES, f"teacher.spec={teacher}", f"student.text_init={teacher}",
                                       *overrides, *self.quick])
        student = self._train(recipe, name)
        scores = self.score(str(student), name, retrieval=False)
        return self._record({"name": name, "model": str(student), **scores, "seconds": time.perf_counter() - start})

    def score(self, spec: str, name: str, retrieval: bool) -> dict:
        seg = evaluate({"model": spec}, "zeroshot-seg", self.dataset, self.work / f"eval-{name}", quiet=True,
                       limit=self.eval_limit, overlays=0)
        scores = {m: seg["models"]["model"][m] for m in SEG_METRICS}
        (self.work / "baselines.json").write_text(json.dumps(seg["baselines"], indent=2))
        if retrieval:
            ret = evaluate({"model": spec}, "retrieval", self.dataset, self.work / f"retrieval-{name}", quiet=True,
                           limit=self.eval_limit)
            scores.update({m: ret["models"]["model"][m] for m in RETRIEVAL_METRICS})
        return scores


def summary(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def t_quantile(dof: int) -> float:
    known = [d for d in T_975 if d <= dof]
    return T_975[max(known)] if known else float("nan")


def paired(reference: list[float], other: list[float]) -> dict:
    """Per-seed differences reference - other, their mean, standard deviation and 95% confidence interval
    (Student's t, n - 1 degrees of freedom)."""
    diffs = [a - b for a, b in zip(reference, other, strict=True)]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return {"differences": diffs, "mean": mean, "std": 0.0, "ci95": [float("nan"), float("nan")]}
    sd = statistics.stdev(diffs)
    half = t_quantile(len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return {"differences": diffs, "mean": mean, "std": sd, "ci95": [mean - half, mean + half]}


def verdict(ci: list[float], expect: str) -> str:
    """expect: 'positive' (reference better), 'equal' (no difference claimed)."""
    low, high = ci
    if math.isnan(low):
        return "too few seeds"
    if expect == "equal":
        return "consistent (the CI includes 0)" if low <= 0 <= high else "contradicted (the CI excludes 0)"
    if low > 0:
        return "reproduced (the CI is above 0)"
    if high < 0:
        return "contradicted (the CI is below 0)"
    return "not shown (the CI includes 0)"


def markdown(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def plot_intervals(path: Path, labels: list[str], means: list[float], cis: list[list[float]], xlabel: str,
                   title: str) -> None:
    """Horizontal means with 95% intervals, zero marked: one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    y = list(range(len(labels)))[::-1]
    errors = [[m - c[0] for m, c in zip(means, cis)], [c[1] - m for m, c in zip(means, cis)]]
    ax.errorbar(means, y, xerr=errors, fmt="o", capsize=4, color="tab:blue")
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks(y, labels)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
