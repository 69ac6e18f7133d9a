"""`evaluate(...)`: run one task for several models on one dataset and write the report."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from distill.eval import depth, fidelity, knn, linear_seg, retrieval, zeroshot_cls, zeroshot_seg
from distill.eval.probe import ProbeOptions
from distill.eval.report import json_safe, write_report
from distill.eval.task import ModelLoader, resolve_device, spec_text
from common.errors import UserError

TASKS = {
    "zeroshot-seg": (zeroshot_seg.run, zeroshot_seg.SegOptions),
    "retrieval": (retrieval.run, retrieval.RetrievalOptions),
    "zeroshot-cls": (zeroshot_cls.run, zeroshot_cls.ClsOptions),
    "fidelity": (fidelity.run, fidelity.FidelityOptions),
    "linear-seg": (linear_seg.run, ProbeOptions),
    "depth": (depth.run, depth.DepthOptions),
    "knn": (knn.run, knn.KnnOptions),
}


def _task_options(task: str, options: dict):
    cls = TASKS[task][1]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"option {unknown[0]!r} does not apply to task {task}; expected one of {', '.join(sorted(known))}")
    return cls(**options)


def evaluate(models: dict, task: str, dataset: str, out_dir, *, device: str | None = None,
             dtype: torch.dtype = torch.float32, quiet: bool = False, cost: bool = True, **options) -> dict:
    """Evaluate `models` ({name: spec or loaded model}) on `task` and write `out_dir/report.json`.

    Returns the report: {"task", "dataset", "models": {name: {metric: value}}, "baselines",
    "sources": {name: {"spec", "fingerprint"}}, "options", "cost": {name: distill.eval.cost.model_cost}}.
    Models are loaded one at a time (fidelity: all at once), so a giant teacher and its students need not fit
    in memory together; `cost=False` leaves out the cost (parameters, GFLOPs, images/s, peak memory).
    Options are the fields of the task's options dataclass (e.g. `SegOptions`).
    """
    if task not in TASKS:
        raise UserError(f"task {task!r} is unknown; expected one of {', '.join(TASKS)}")
    if not models:
        raise UserError("no model to evaluate; expected at least one NAME=SPEC")
    opts = _task_options(task, options)
    device = resolve_device(device)
    out_dir = Path(out_dir)
    loader = ModelLoader(device, dtype, costs={} if cost else None)
    result = TASKS[task][0](dict(models), dataset, out_dir, opts, loader)
    report = json_safe({
        "task": task,
        "dataset": result.dataset,
        "models": result.models,
        "baselines": result.baselines,
        **({"counts": result.counts} if result.counts else {}),
        **({"bootstrap": result.bootstrap} if result.bootstrap else {}),
        "sources": {name: {"spec": spec_text(spec), "fingerprint": loader.fingerprints.get(spec_text(spec))}
                    for name, spec in models.items()},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()},
        **({"cost": loader.costs} if cost else {}),
    })
    table = write_report(out_dir, report)
    if not quiet:
        print(table)
    return report
