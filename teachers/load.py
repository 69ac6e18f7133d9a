"""`load_teacher(spec)`: pick the source for a spec string and return a frozen `Teacher`.

Spec forms:
  google/tipsv2-g14 | DIR (config.json)         TIPSv2 or DINOv2/CLIP/SigLIP through transformers
  npz:VISION.npz[,TEXT.npz][,tokenizer=PATH]    official google-deepmind/tips checkpoints
  DIR with *_vision.npz [*_text.npz tokenizer.model]   the same, found in a directory
  timm:NAME[,checkpoint=PATH][,KEY=VALUE...]    timm ViT, vision only
  DIR with student.json                         a tipsdistill student checkpoint
  DIR with timm_config.json                     a student exported with --format timm (vision only)
  onnx:DIR                                      a student exported with --format onnx, run by onnxruntime
  micro                                         the packaged micro TIPSv2 teacher (a local directory named
                                                `micro` is `./micro`)
  micro-ssl                                     the packaged micro teacher pretrained without captions
                                                (self-distillation only: a DINO-style second teacher)
`KEY=VALUE` items in a spec and keyword options are the same thing (options win).
"""
from __future__ import annotations

import inspect
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig

from teachers.base import Teacher
from common.errors import UserError
from teachers.sources import hf_encoder, hf_tipsv2, official, onnx_source, student, timm_source

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Teachers shipped inside the package, by name: the embedded default's micro TIPSv2 teacher, and the same architecture
# pretrained without the caption term (the several-teachers lab's second teacher); both pretrained by this toolkit
# on the built-in scenes (`distill.default_job` says how to regenerate them).
_ASSETS = Path(__file__).resolve().parent / "assets"
PACKAGED = {"micro": _ASSETS / "micro_teacher", "micro-ssl": _ASSETS / "micro_ssl_teacher"}
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
_FORMS = ("micro, micro-ssl, a save_pretrained directory or hub id, npz:VISION.npz[,TEXT.npz], a directory with *_vision.npz, "
          "timm:NAME[,checkpoint=PATH], a timm export directory, onnx:DIR or a student checkpoint directory")


def teacher_dtype(device: str | torch.device, precision: str | None) -> torch.dtype:
    """The dtype a frozen teacher runs in: float32 on CPU (no fast bf16 matmuls there), otherwise the run's
    precision (`bf16` or `fp16`; float32 without mixed precision)."""
    if torch.device(device).type == "cpu":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision or "no", torch.float32)


def load_teacher(spec: str | Path, *, dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu",
                 **options) -> Teacher:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; expected one of {', '.join(_DTYPES)}")
        dtype = _DTYPES[dtype]
    teacher = _build(str(spec), options)
    return teacher.to(device=device, dtype=dtype).freeze()


def _build(spec: str, options: dict) -> Teacher:
    spec = str(PACKAGED.get(spec, spec))
    if spec.startswith("timm:"):
        (name,), items = _split(spec[len("timm:"):], 1, 1, spec)
        return _call(timm_source.load, name, options={**items, **options})
    if spec.startswith("onnx:"):
        return _call(onnx_source.load, Path(spec[len("onnx:"):]), options=options)
    if spec.startswith("npz:"):
        paths, items = _split(spec[len("npz:"):], 1, 2, spec)
        vision, text = Path(paths[0]).expanduser(), (Path(paths[1]).expanduser() if len(paths) > 1 else None)
        return _call(official.load, vision, text, options={**items, **options})
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "student.json").is_file():
            return _call(student.load, path, options=options)
        if (path / timm_source.EXPORT_MANIFEST).is_file():
            return _call(timm_source.load_export, path, options=options)
        if any(path.glob("*_vision.npz")):
            return _call(official.load, *official.find_pair(path), options=options)
        if (path / "config.json").is_file():
            return _hugging_face(str(path), options)
        raise UserError(f"{path}: no config.json, student.json, {timm_source.EXPORT_MANIFEST} or *_vision.npz inside; "
                        f"expected {_FORMS}")
    if path.exists():
        raise UserError(f"{path} is a file; expected {_FORMS}")
    if _HUB_ID.fullmatch(spec):
        return _hugging_face(spec, options)
    raise UserError(f"{spec}: no such file or directory; expected {_FORMS}")


def _hugging_face(name_or_dir: str, options: dict) -> Teacher:
    try:
        config = AutoConfig.from_pretrained(name_or_dir, trust_remote_code=options.get("trust_remote_code", False),
                                            revision=options.get("revision"))
    except (OSError, ValueError) as err:
        raise UserError(f"{name_or_dir}: not a local path and not loadable from the Hugging Face hub "
                        f"({str(err).splitlines()[0]}); expected {_FORMS}") from None
    source = hf_tipsv2 if config.model_type in hf_tipsv2.MODEL_TYPES else hf_encoder
    try:
        return _call(source.load, name_or_dir, config, options=options)
    except (OSError, SafetensorError) as err:  # SafetensorError: a model.safetensors cut short or not one
        raise UserError(f"{name_or_dir}: could not load the weights ({str(err).splitlines()[0]})") from None
    except pickle.UnpicklingError:
        # torch.load refused a pickled pytorch_model.bin holding more than tensors; loading it could run its code.
        raise UserError(f"{name_or_dir}: its pickled weights (pytorch_model.bin) hold objects other than tensors, "
                        "refused; expected model.safetensors or plain tensors") from None


def _split(body: str, least: int, most: int, spec: str) -> tuple[list[str], dict[str, str]]:
    """'a,b,key=value' -> (['a', 'b'], {'key': 'value'})."""
    items = [item for item in body.split(",") if item]
    positional = [item for item in items if "=" not in item]
    named = {key: _value(value) for key, value in (item.split("=", 1) for item in items if "=" in item)}
    if not least <= len(positional) <= most:
        raise UserError(f"{spec!r}: expected {least}-{most} comma-separated names before KEY=VALUE options")
    return positional, named


def _value(text: str):
    """Spec option values are strings; numbers and booleans become Python values."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _call(load, *args, options: dict) -> Teacher:
    """Call a source's `load`, turning an unknown option into a UserError that lists the accepted ones."""
    parameters = inspect.signature(load).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = [n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        raise UserError(f"unknown option(s) {', '.join(unknown)} for this source; "
                        f"expected {', '.join(accepted) or 'none'}")
    return load(*args, **options)
