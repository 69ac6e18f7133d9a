"""Export a student checkpoint to the formats users load: transformers (`hf`), timm, official `.npz`, ONNX
(`students.onnx_export`, optionally int8-quantised).

Every export is built in a temp dir beside `out` and renamed into place at the end, so a failure
leaves nothing half-written, and an existing non-empty `out` is only replaced with `overwrite`.
`with_heads` adds the projection heads (the "teacher-space" variant) as
`teacher_space_heads.safetensors` + `teacher_space_heads.json` in any format; a student of several teachers
adds each other teacher's as `teacher_space_heads.NAME.safetensors` + `.NAME.json`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import Tipsv2ImageProcessor, Tipsv2Model, Tipsv2Processor, Tipsv2VisionModel
from transformers.initialization import no_init_weights

from common.atomic import atomic_directory
from students.checkpoint import load_student
from students.heads import ProjectionHeads
from students.model import Student
from students.model_card import model_card
from students.onnx_export import QUANTIZATIONS, export_onnx
from students.timm_student import FORMATS as TIMM_STUDENT_FORMATS, TimmStudent
from students.zoo import get_arch
from common.errors import UserError
from teachers.sources.timm_source import EXPORT_MANIFEST as TIMM_MANIFEST, EXPORT_WEIGHTS as TIMM_WEIGHTS
from teachers.timm_vision import EXPORT_TOKENS as TIMM_TOKENS
from teachers.official_npz import HEADS_FILE, official_from_tipsv2, write_npz
from teachers.student_checkpoint import recorded_teachers

FORMATS = ("hf", "timm", "npz", "onnx")
HEADS_WEIGHTS = "teacher_space_heads.safetensors"
HEADS_MANIFEST = "teacher_space_heads.json"
NPZ_VISION = "tips_v2_student_vision.npz"
NPZ_TEXT = "tips_v2_student_text.npz"


@dataclass
class ExportResult:
    out: Path
    format: str
    files: list[str]
    notes: list[str] = field(default_factory=list)


def export_student(
    checkpoint: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    *,
    with_heads: bool = False,
    overwrite: bool = False,
    evaluation: list[str] = (),
    quantize: str | None = None,
) -> ExportResult:
    """`evaluation`: markdown sections for the model card (`distill.eval.report.card_sections`);
    `quantize`: "int8" (onnx only)."""
    if fmt not in FORMATS:
        raise UserError(f"export format {fmt!r} is unknown; expected one of {', '.join(FORMATS)}")
    if quantize is not None and (fmt != "onnx" or quantize not in QUANTIZATIONS):
        raise UserError(f"--quantize {quantize} with --format {fmt}; expected --format onnx and one of "
                        f"{', '.join(QUANTIZATIONS)}")
    source = Path(checkpoint).resolve()
    if Path(out).resolve() in (source, *source.parents):
        # --overwrite would replace the checkpoint along with --out.
        raise UserError(f"--out {out} is or holds the checkpoint {checkpoint}; expected a directory outside it")
    student = load_student(checkpoint)
    timm_student = isinstance(student, TimmStudent)
    if timm_student and fmt not in TIMM_STUDENT_FORMATS:
        raise UserError(f"--format {fmt}: {checkpoint} is a {student.name} student, not a TIPSv2 backbone; expected "
                        f"--format {' or '.join(TIMM_STUDENT_FORMATS)}")
    if with_heads and student.heads is None:
        raise UserError(f"--with-heads: {checkpoint} has no projection heads (built without teacher_width)")
    student.eval()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        if fmt == "onnx":  # the heads go into its vision graphs (and beside them, as in every format)
            notes = export_onnx(student, tmp, list(evaluation), with_heads=with_heads, quantize=quantize)
        else:
            notes = (_export_timm_student if timm_student else _EXPORTERS[fmt])(student, tmp, list(evaluation))
        if with_heads:
            _write_heads(student, tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    return ExportResult(Path(out), fmt, files, notes)


def _export_hf(student: Student, out: Path, evaluation: list[str]) -> list[str]:
    config = student.tipsv2_config()
    notes = []
    if student.text is not None:
        with no_init_weights():  # overwritten by the student's weights right below
            model = Tipsv2Model(config)
        model.load_state_dict(student.tipsv2_state_dict())
        usage = "model = AutoModel.from_pretrained('DIR')  # Tipsv2Model: vision + text + temperature"
    else:
        with no_init_weights():
            model = Tipsv2VisionModel(config.vision_config)
        model.load_state_dict(student.vision.state_dict())
        usage = "model = AutoModel.from_pretrained('DIR')  # Tipsv2VisionModel (this student has no text tower)"
        notes.append("the student has no text tower: exported a Tipsv2VisionModel (no text, no temperature)")
    model.save_pretrained(out)
    size = student.image_size
    image_processor = Tipsv2ImageProcessor(size={"height": size, "width": size})
    if student.tokenizer is not None:
        Tipsv2Processor(image_processor=image_processor, tokenizer=student.tokenizer).save_pretrained(out)
        usage += "\nprocessor = AutoProcessor.from_pretrained('DIR')  # Tipsv2Processor: image processor + tokenizer"
    else:
        image_processor.save_pretrained(out)
        usage += "\nimage_processor = AutoImageProcessor.from_pretrained('DIR')"
        notes.append("the student has no tokenizer: exported the image processor only")
    usage = "from transformers import AutoModel, AutoProcessor, AutoImageProcessor\n" + usage
    _write_card(student, out, evaluation, "transformers", usage)
    return notes


def timm_kwargs(student: Student) -> dict[str, Any]:
    """`timm.create_model` kwargs that rebuild this vision tower (redundant for the released shapes)."""
    vision = student.vision.config
    return dict(embed_dim=vision.hidden_size, depth=vision.num_hidden_layers, num_heads=vision.num_attention_heads,
                mlp_ratio=vision.mlp_ratio, patch_size=vision.patch_size, img_size=vision.image_size)


def _timm_pretrained_cfg(student: Student, name: str) -> dict[str, Any]:
    """The `pretrained_cfg` entries timm's data pipeline reads (`resolve_data_config(model=m)`), for
    `create_model(..., pretrained_cfg_overlay=...)`: without them timm takes the released 448 px TIPSv2 config.
    TIPSv2 takes RGB in [0,1] as is (mean 0, std 1); no hub id, so the model does not claim timm's weights."""
    size = student.image_size
    return {"architecture": name, "tag": f"tipsdistill-{student.name}", "hf_hub_id": None,
            "input_size": [3, size, size], "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def _export_timm(student: Student, out: Path, evaluation: list[str]) -> list[str]:
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    vision = student.vision.config
    if vision.use_swiglu_ffn or vision.num_register_tokens != 1:
        raise UserError(f"timm export supports the TIPSv2 GELU layout with 1 register; {student.name} differs")
    name, kwargs = get_arch(student.name).timm_model, timm_kwargs(student)
    # The official layout is what timm's own TIPSv2 filter converts from (CLS pos folded in, qkv fused).
    arrays, _ = official_from_tipsv2({f"vision_model.{k}": v for k, v in student.vision.state_dict().items()},
                                     student.tipsv2_config())
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    state = checkpoint_filter_fn({k: torch.from_numpy(v) for k, v in arrays.items()}, model)
    model.load_state_dict(state, strict=True, assign=True)  # checks keys and shapes before anything is written
    save_file({k: v.contiguous() for k, v in state.items()}, out / TIMM_WEIGHTS)
    manifest = {"model_name": name, "kwargs": kwargs, "pretrained_cfg": _timm_pretrained_cfg(student, name)}
    (out / TIMM_MANIFEST).write_text(json.dumps(manifest, indent=2))
    usage = (f"import json, timm\ncfg = json.load(open('DIR/{TIMM_MANIFEST}'))\n"
             f"model = timm.create_model(cfg['model_name'], pretrained=False, checkpoint_path='DIR/{TIMM_WEIGHTS}',\n"
             "                          pretrained_cfg_overlay=cfg['pretrained_cfg'], **cfg['kwargs'])\n"
             "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))\n"
             "image = load_image(path)  # see Input above: transparency on white, as in training\n"
             "tokens = model.forward_features(transform(image)[None])  # [CLS1, register, patches]")
    _write_card(student, out, evaluation, "timm", usage)
    return ["timm holds the vision tower only; the text tower is not exported in this format"] if student.text else []


def _export_timm_student(student: TimmStudent, out: Path, evaluation: list[str]) -> list[str]:
    """The timm model's own state dict (no classifier) loads with `timm.create_model(..., checkpoint_path=...)`;
    the CLS maps and the feature level, which timm's model does not hold, go beside it."""
    state = {k: v.detach().contiguous() for k, v in student.vision.state_dict().items()}
    save_file({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}, out / TIMM_WEIGHTS)
    save_file({k: v for k, v in state.items() if not k.startswith("model.")}, out / TIMM_TOKENS)
    (out / TIMM_MANIFEST).write_text(json.dumps(student.vision.timm_manifest(), indent=2))
    level = student.vision.level
    usage = (f"import json, timm\ncfg = json.load(open('DIR/{TIMM_MANIFEST}'))\n"
             f"model = timm.create_model(cfg['model_name'], pretrained=False, checkpoint_path='DIR/{TIMM_WEIGHTS}',\n"
             "                          pretrained_cfg_overlay=cfg['pretrained_cfg'], **cfg['kwargs'])\n"
             "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))\n"
             "image = load_image(path)  # see Input above: transparency on white, as in training\n"
             f"final, (patches,) = model.forward_intermediates(transform(image)[None], indices=[{level}], norm=True)\n"
             f"pooled = model.forward_head(final, pre_logits=True)  # CLS1/CLS2 maps: {TIMM_TOKENS}\n"
             "# or, with tipsdistill: teachers.load_teacher('DIR').encode_image(pixels)")
    _write_card(student, out, evaluation, "timm", usage)
    return []


def _export_npz(student: Student, out: Path, evaluation: list[str]) -> list[str]:
    vision_arrays, text_arrays = official_from_tipsv2(student.tipsv2_state_dict(), student.tipsv2_config())
    write_npz(out / NPZ_VISION, vision_arrays)
    if text_arrays is not None:
        write_npz(out / NPZ_TEXT, text_arrays)
    heads = {"num_heads": student.vision.config.num_attention_heads}
    if student.text is not None:
        heads["text_num_heads"] = student.text.config.num_attention_heads
    (out / HEADS_FILE).write_text(json.dumps(heads, indent=2))
    if student.tokenizer is not None:
        student.tokenizer.save_pretrained(out)
    usage = (f"# official google-deepmind/tips key layout: {NPZ_VISION}" + (f" + {NPZ_TEXT}" if text_arrays else "")
             + f"\nfrom teachers import load_teacher\nteacher = load_teacher('DIR')  # both towers, head counts from {HEADS_FILE}")
    _write_card(student, out, evaluation, "official .npz", usage)
    return []


_EXPORTERS: dict[str, Callable[[Student, Path, list[str]], list[str]]] = {
    "hf": _export_hf, "timm": _export_timm, "npz": _export_npz,
}


def _write_card(student: Student, out: Path, evaluation: list[str], fmt: str, usage: str) -> None:
    (out / "README.md").write_text(model_card(student, evaluation, fmt, usage))


def heads_files(teacher: str | None = None) -> tuple[str, str]:
    """(weights, manifest) file names of the primary teacher's heads, or of those of the teacher named `teacher`."""
    if teacher is None:
        return HEADS_WEIGHTS, HEADS_MANIFEST
    return HEADS_WEIGHTS.replace(".", f".{teacher}.", 1), HEADS_MANIFEST.replace(".", f".{teacher}.", 1)


def _write_heads(student: Student, out: Path) -> None:
    """Every teacher's heads. A student of several teachers names in each manifest the teacher its heads map to
    (name, spec, fingerprint: its metadata's record); a one-teacher student's manifest is as it always was, its
    checkpoint's metadata naming the one teacher."""
    records = recorded_teachers(student.metadata) if len(student.teacher_heads) else {}
    primary = next(iter(records), None)
    for teacher, heads in [(None, student.heads), *student.teacher_heads.items()]:
        weights, manifest_file = heads_files(teacher)
        save_file({k: v.detach().contiguous() for k, v in heads.state_dict().items()}, out / weights)
        manifest = {"kind": heads.kind, "width": heads.width, "teacher_width": heads.teacher_width,
                    "applies_to": "final (post-LayerNorm) tokens: cls.* to CLS1, registers.* to each register, "
                                  "patches.* to every patch token"}
        record = records.get(primary if teacher is None else teacher)
        if record is not None:
            manifest["teacher"] = record
        (out / manifest_file).write_text(json.dumps(manifest, indent=2))


def load_heads(directory: str | os.PathLike, teacher: str | None = None) -> ProjectionHeads:
    """The teacher-space heads of an export made with `with_heads=True`: the primary teacher's, or those of the
    teacher named `teacher`."""
    directory = Path(directory)
    weights, manifest_file = heads_files(teacher)
    if not (directory / manifest_file).is_file():
        raise UserError(f"{directory} has no {manifest_file}; export with --with-heads")
    manifest = json.loads((directory / manifest_file).read_text())
    heads = ProjectionHeads(manifest["width"], manifest["teacher_width"], manifest["kind"])
    heads.load_state_dict(load_file(directory / weights))
    return heads
