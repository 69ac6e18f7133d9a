"""The README.md model card written next to every export: architecture, recipe, teacher, evaluation.

The recipe and teacher come from the checkpoint's metadata (`student.json`: keys `recipe`,
`teacher` / `teacher_fingerprint`); the evaluation sections are markdown the caller renders (the export
command turns `tipsdistill eval` reports into them).
"""
from __future__ import annotations

import os
import re
from typing import Any

import yaml

from students.model import Student
from teachers.student_checkpoint import recorded_teachers

# What a public teacher spec looks like (a hub id, a packaged name, timm:NAME); anything else is a local path,
# which a shared model card must not leak.
_PUBLIC_SPEC = re.compile(r"(timm:[\w.-]+|[A-Za-z0-9][\w.-]*/[\w.-]+|micro|micro-ssl)")

# How training read images (`distill/data/clean.py`): EXIF rotation, transparency composited on white. A plain
# `.convert("RGB")` turns transparent pixels black, which the student never saw.
RGB_AS_TRAINED = (
    "from PIL import Image, ImageOps\n"
    "def load_image(path):  # as training read images: EXIF rotation, transparency (RGBA, LA, P) on white\n"
    "    image = ImageOps.exif_transpose(Image.open(path)).convert('RGBA')\n"
    "    return Image.alpha_composite(Image.new('RGBA', image.size, 'white'), image).convert('RGB')")


def _params(module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f}M"


def public_spec(spec: str | None) -> str | None:
    """A spec as a card may show it: public names as they are, a local path only by its last component."""
    if not spec:
        return None
    if _PUBLIC_SPEC.fullmatch(spec) and not os.path.exists(spec):
        return f"`{spec}`"
    return f"a local checkpoint `{os.path.basename(os.path.normpath(spec.split(',')[0]))}`"


def _teacher(metadata: dict[str, Any]) -> str | None:
    teacher = metadata.get("teacher")
    fingerprint = metadata.get("teacher_fingerprint")
    if isinstance(teacher, dict):
        fingerprint = fingerprint or teacher.get("fingerprint")
        teacher = teacher.get("spec") or teacher.get("name")
    if teacher is None and fingerprint is None:
        return None
    return _named(teacher, fingerprint)


def _named(spec: str | None, fingerprint: str | None) -> str:
    named = public_spec(spec) or "A teacher"
    return f"{named[0].upper()}{named[1:]} with fingerprint `{fingerprint}`" if fingerprint else named


def _teacher_lines(metadata: dict[str, Any]) -> list[str]:
    """One line for one teacher; a list for a student of several, each with the name its heads go by."""
    records = recorded_teachers(metadata)
    if len(records) < 2:
        return ["## Teacher", "", _teacher(metadata) or "Not recorded in the checkpoint.", ""]
    lines = ["## Teachers", "", "Distilled from several teachers at once, one projection-head set each "
             "(`--with-heads` exports: `teacher_space_heads.*` for the first, `teacher_space_heads.NAME.*` for the "
             "others):", ""]
    for i, (name, t) in enumerate(records.items()):
        role = " (primary: the caption term's side)" if i == 0 else ""
        lines.append(f"- `{name}`{role}: {_named(t.get('spec'), t.get('fingerprint'))}")
    return lines + [""]


def _without_local_paths(node: Any) -> Any:
    """The recorded recipe with every absolute local path (a teacher, data, cache or init spec, alone or after a
    `kind:` prefix or a `key=`, between commas) cut to `.../NAME`: a card is shared, the paths are the trainer's."""
    if isinstance(node, dict):
        return {k: _without_local_paths(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_local_paths(v) for v in node]
    if isinstance(node, str):
        return ",".join(_LOCAL_PATH.sub(lambda m: f"{m.group(1)}.../{os.path.basename(m.group(2).rstrip('/'))}", item)
                        for item in node.split(","))
    return node


# An absolute local path at the start of a spec item, or after `kind:` / `key=` (never a URL's `scheme://`).
_LOCAL_PATH = re.compile(r"^((?:[\w.+-]+:|[\w.-]+=)?)((?:/(?!/)|~/)\S+)$")


def model_card(student: Student, evaluation: list[str], fmt: str, usage: str) -> str:
    """`evaluation`: markdown sections, one per evaluation report."""
    meta = student.metadata
    lines = [
        "---", "library_name: " + (fmt if fmt in ("transformers", "timm", "onnx") else "tips"),
        "license: apache-2.0", "tags: [tipsv2, tipsdistill, distillation, vision-language]", "---", "",
        f"# {student.name} (tipsdistill student, {fmt} format)", "",
        f"A TIPSv2 student distilled with tipsdistill. Vision: {student.vision_summary()} "
        f"({_params(student.vision)} parameters).",
    ]
    if student.text is not None:
        t = student.text.config
        lines.append(f"Text: width {t.hidden_size}, depth {t.num_hidden_layers}, {t.num_attention_heads} heads, "
                     f"vocabulary {t.vocab_size} ({_params(student.text)} parameters); "
                     f"temperature {float(student.temperature.detach()):.6g}.")
    lines += [student.input_summary(),
              "Training composited transparent images (RGBA, LA, P) on white after EXIF rotation; "
              "`.convert('RGB')` alone puts black there, so read images as training did:", "",
              "```python", RGB_AS_TRAINED, "```", ""]
    lines += ["## Usage", "", "```python", usage.replace("DIR", "path/to/this/dir"), "```", ""]
    lines += _teacher_lines(meta)
    for key in ("init", "text_init"):
        if key in meta:
            lines += [f"Initialised ({key}) from {public_spec(meta[key].get('spec'))} "
                      f"(fingerprint `{meta[key].get('fingerprint')}`).", ""]
    if "step" in meta:
        lines += [f"Checkpoint after {meta['step']} training steps.", ""]
    lines += ["## Recipe", ""]
    recipe = meta.get("recipe")
    if recipe is None:
        lines += ["Not recorded in the checkpoint.", ""]
    else:
        text = recipe if isinstance(recipe, str) else yaml.safe_dump(_without_local_paths(recipe), sort_keys=False)
        lines += ["```yaml", text.rstrip(), "```", ""]
    lines += ["## Evaluation", ""]
    for section in evaluation:
        lines += [section.rstrip(), ""]
    if not evaluation:
        lines.append("No evaluation report found (run `tipsdistill eval` and re-export, or pass --report).")
    return "\n".join(lines).rstrip() + "\n"
