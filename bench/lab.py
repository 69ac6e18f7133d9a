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

from distill.recipe_loader import load_recipe
from distill.default_job import DEFAULT_OVERRIDES, EVAL_DATASET
from distill.eval import evaluate
from distill.eval.models import TEACHER_SPACE
from distill.run import run_training

SEG_METRICS = ("miou", "things_miou", "pixel_acc")
RETRIEVAL_METRICS = ("i2t_r1", "t2i_r1")
ALPHA = 0.05  # family-wise error rate of all the lab's verdicts together (Holm)
# An "equal quality" claim is shown when both one-sided tests against +-MARGIN reject (TOST, Schuirmann 1987),
# Holm-corrected with the rest; the margin is stated here, before any run, in the metrics' points.
MARGIN = 2.0


@dataclass
class Lab:
    work: Path
    eval_limit: int  # scenes scored per model
    quick: list[str] = field(default_factory=list)  # overrides that shrink every run (the --quick smoke test)
    quick_pretrain: list[str] = field(default_factory=list)  # and pretraining runs (the `pretrain:` section)
    dataset: str = EVAL_DATASET  # held-out scenes; `scenes:split=validation` where the lab chooses
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
        """A student distilled from `teacher` with the default job's settings + overrides, scored zero-shot in its
        teacher's space."""
        if name in self.records:
            return self.records[name]
        start = time.perf_counter()
        recipe = load_recipe("micro", [*DEFAULT_OVERRIDES, f"teacher.spec={teacher}", *overrides, *self.quick])
        student = self._train(recipe, name)
        scores = self.score(f"{student}{TEACHER_SPACE}", name, retrieval=False)
        return self._record({"name": name, "model": str(student), **scores, "seconds": time.perf_counter() - start})

    def teacher(self, spec: str) -> dict:
        """The teacher the students distil from, scored as they are (no retrieval: they are not scored on it)."""
        name = f"teacher-{Path(spec).name}"
        if name in self.records:
            return self.records[name]
        return self._record({"name": name, "model": spec, **self.score(spec, name, retrieval=False)})

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


def paired(reference: list[float], other: list[float]) -> dict:
    """Per-seed differences reference - other: their mean, standard deviation, 95% confidence interval (Student's
    t, n - 1 degrees of freedom), the two-sided p-value of "no difference" and the TOST p-value of "a difference
    inside +-MARGIN"."""
    from scipy import stats

    diffs = [a - b for a, b in zip(reference, other, strict=True)]
    mean, n = statistics.fmean(diffs), len(diffs)
    if n < 2:
        nan = float("nan")
        return {"differences": diffs, "mean": mean, "std": 0.0, "ci95": [nan, nan], "p": nan, "p_equal": nan}
    sd = statistics.stdev(diffs)
    se = sd / math.sqrt(n)
    half = stats.t.ppf(0.975, n - 1) * se
    if se == 0:
        p = 0.0 if mean else 1.0
        p_equal = 0.0 if abs(mean) < MARGIN else 1.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
        p_equal = float(max(stats.t.sf((mean + MARGIN) / se, n - 1), stats.t.cdf((mean - MARGIN) / se, n - 1)))
    return {"differences": diffs, "mean": mean, "std": sd, "ci95": [mean - half, mean + half], "p": p,
            "p_equal": p_equal}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): sorted ascending, p_(i) * (m - i + 1), made monotone;
    rejecting where the adjusted value is <= ALPHA is Holm's procedure at family-wise level ALPHA."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def verdict(comparison: dict, expect: str) -> str:
    """expect: 'positive' (reference better) or 'equal'; comparison holds the Holm-adjusted `p_holm` and, for
    'equal', `p_equal_holm`."""
    if math.isnan(comparison["p"]):
        return "too few seeds"
    different = comparison["p_holm"] <= ALPHA
    if expect == "equal":
        if comparison["p_equal_holm"] <= ALPHA:
            return f"equal within +-{MARGIN:g} (TOST, Holm)"
        return "different (Holm)" if different else f"not shown (neither different nor within +-{MARGIN:g})"
    if different:
        return "reproduced (Holm)" if comparison["mean"] > 0 else "contradicted (Holm)"
    return "not shown (Holm)"


def with_verdicts(comparisons: list[dict]) -> list[dict]:
    """Holm over the whole family: every test the lab reports (difference tests, and TOST tests of equal claims)."""
    tests = [(i, "p") for i in range(len(comparisons))]
    tests += [(i, "p_equal") for i, c in enumerate(comparisons) if c["expect"] == "equal"]
    adjusted = holm([comparisons[i][key] if not math.isnan(comparisons[i][key]) else 1.0 for i, key in tests])
    for (i, key), value in zip(tests, adjusted):
        comparisons[i][f"{key}_holm"] = value
    for c in comparisons:
        c["verdict"] = verdict(c, c["expect"])
    return comparisons


def emit(result: dict, out: Path | None) -> None:
    """Every bench script's output: the result as JSON on stdout and, with --out, in that file."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


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
