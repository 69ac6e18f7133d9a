"""The README.md model card written next to every export: architecture, recipe, teacher, evaluation.

The recipe and teacher come from the checkpoint's metadata (`student.json`: keys `recipe`,
`teacher` / `teacher_fingerprint`); the evaluation tables from `tipsdistill eval` reports
(`--report`, metadata key `eval`, or a `report.json` inside or beside the checkpoint directory),
rendered with the evaluation's own side-by-side table.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from distill.eval.report import markdown_table
from students.model import Student
from teachers.errors import UserError

REPORT = "report.json"


def _is_eval_report(report) -> bool:
    return isinstance(report, dict) and isinstance(report.get("models"), dict) and "task" in report


def find_reports(checkpoint: Path, metadata: dict[str, Any], explicit: list[Path] = ()) -> list[dict]:
    """`tipsdistill eval` reports for the card: `explicit` paths (must be valid), else metadata `eval`
    (one report or a list), else a `report.json` inside or beside the checkpoint (skipped if not one)."""
    reports = []
    for path in explicit:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"--report {path} is not a readable JSON file ({exc})") from None
        if not _is_eval_report(report):
            raise UserError(f"--report {path} is not a `tipsdistill eval` report.json (no task/models)")
        reports.append(report)
    if reports:
        return reports
    recorded = metadata.get("eval")
    recorded = recorded if isinstance(recorded, list) else [recorded]
    if any(_is_eval_report(r) for r in recorded):
        return [r for r in recorded if _is_eval_report(r)]
    for path in (checkpoint / REPORT, checkpoint.parent / REPORT):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if _is_eval_report(report):
            return [report]
    return []


def _params(module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f}M"


def _teacher(metadata: dict[str, Any]) -> str | None:
    teacher = metadata.get("teacher")
    fingerprint = metadata.get("teacher_fingerprint")
    if isinstance(teacher, dict):
        fingerprint = fingerprint or teacher.get("fingerprint")
        teacher = teacher.get("spec") or teacher.get("name")
    if teacher is None and fingerprint is None:
        return None
    named = f"`{teacher}`" if teacher else "A teacher"
    return f"{named} with fingerprint `{fingerprint}`" if fingerprint else named


def model_card(student: Student, reports: list[dict], fmt: str, usage: str) -> str:
    v = student.vision.config
    meta = student.metadata
    lines = [
        "---", "library_name: " + ("transformers" if fmt == "transformers" else "timm" if fmt == "timm" else "tips"),
        "license: apache-2.0", "tags: [tipsv2, tipsdistill, distillation, vision-language]", "---", "",
        f"# {student.name} (tipsdistill student, {fmt} format)", "",
        f"A TIPSv2 student distilled with tipsdistill. Vision: width {v.hidden_size}, depth {v.num_hidden_layers}, "
        f"{v.num_attention_heads} heads, patch {v.patch_size}, {v.image_size} px, 1 register "
        f"({_params(student.vision)} parameters).",
    ]
    if student.text is not None:
        t = student.text.config
        lines.append(f"Text: width {t.hidden_size}, depth {t.num_hidden_layers}, {t.num_attention_heads} heads, "
                     f"vocabulary {t.vocab_size} ({_params(student.text)} parameters); "
                     f"temperature {float(student.temperature.detach()):.6g}.")
    lines += ["Input: RGB in [0, 1], no mean/std normalisation. Tokens: [CLS1, register (CLS2), patches].", ""]
    lines += ["## Usage", "", "```python", usage.replace("DIR", "path/to/this/dir"), "```", ""]
    teacher = _teacher(meta)
    lines += ["## Teacher", "", teacher or "Not recorded in the checkpoint.", ""]
    for key in ("init", "text_init"):
        if key in meta:
            lines += [f"Initialised ({key}) from `{meta[key].get('spec')}` "
                      f"(fingerprint `{meta[key].get('fingerprint')}`).", ""]
    if "step" in meta:
        lines += [f"Checkpoint after {meta['step']} training steps.", ""]
    lines += ["## Recipe", ""]
    recipe = meta.get("recipe")
    if recipe is None:
        lines += ["Not recorded in the checkpoint.", ""]
    else:
        text = recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False)
        lines += ["```yaml", text.rstrip(), "```", ""]
    lines += ["## Evaluation", ""]
    for report in reports:
        lines += [f"### {report['task']} on {report.get('dataset', '?')}", "", markdown_table(report), ""]
    if not reports:
        lines.append("No evaluation report found (run `tipsdistill eval` and re-export, or pass --report).")
    return "\n".join(lines).rstrip() + "\n"
