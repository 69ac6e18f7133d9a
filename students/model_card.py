"""The README.md model card written next to every export: architecture, recipe, teacher, evaluation.

The recipe and teacher come from the checkpoint's metadata (`student.json`: keys `recipe`,
`teacher` / `teacher_fingerprint`); the evaluation table from metadata key `eval` or a
`report.json` inside or beside the checkpoint directory. Any JSON shape is rendered: numeric
leaves become table rows named by their path.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from students.model import Student

REPORT = "report.json"


def find_report(checkpoint: Path, metadata: dict[str, Any]) -> dict | None:
    if isinstance(metadata.get("eval"), dict):
        return metadata["eval"]
    for path in (checkpoint / REPORT, checkpoint.parent / REPORT):
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                return None
    return None


def _params(module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f}M"


def _metric_rows(report: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(report, dict):
        return [row for k, v in report.items() for row in _metric_rows(v, f"{prefix}{k} / ")]
    if isinstance(report, list):
        return [row for i, v in enumerate(report) for row in _metric_rows(v, f"{prefix}{i} / ")]
    if isinstance(report, (int, float)) and not isinstance(report, bool):
        return [(prefix.removesuffix(" / "), report)]
    return []


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


def model_card(student: Student, report: dict | None, fmt: str, usage: str) -> str:
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
    lines += ["## Recipe", ""]
    recipe = meta.get("recipe")
    if recipe is None:
        lines += ["Not recorded in the checkpoint.", ""]
    else:
        text = recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False)
        lines += ["```yaml", text.rstrip(), "```", ""]
    lines += ["## Evaluation", ""]
    rows = _metric_rows(report) if report is not None else []
    if rows:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4g} |" if isinstance(value, float) else f"| {name} | {value} |"
                  for name, value in rows]
    else:
        lines.append("No evaluation report found (run `tipsdistill eval` and re-export).")
    return "\n".join(lines) + "\n"
