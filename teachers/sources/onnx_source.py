"""A student exported with `tipsdistill export --format onnx`, run by onnxruntime: spec `onnx:DIR`.

The directory holds `vision.onnx` (pixels -> cls, registers, patches), `vision_value.onnx` (the same with the
MaskCLIP value trick in the last block), optionally `text.onnx` (input_ids, attention_mask -> pooled text
features) with the tokenizer files, and `onnx_config.json` (sizes, temperature, quantisation). The graphs run
on onnxruntime's CPU execution provider, so tokens and text embeddings are float32 CPU tensors whatever
device evaluation asks for. onnx and onnxruntime are the optional extra `tipsdistill[onnx]`, imported here only.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from teachers.base import Teacher
from teachers.tokenizer import TextTokenizer, load_tokenizer
from common.errors import UserError
from common.types import TOKEN_PARTS, ImageTokens

VISION, VISION_VALUE, TEXT, CONFIG = "vision.onnx", "vision_value.onnx", "text.onnx", "onnx_config.json"
FORMAT = "tipsdistill-onnx"
TOKEN_OUTPUTS = TOKEN_PARTS  # the vision graphs' outputs are named after the token parts
TEXT_INPUTS, TEXT_OUTPUT = ("input_ids", "attention_mask"), "text_features"


def head_outputs(teacher: str | None = None) -> tuple[str, ...]:
    """The vision graphs' outputs through the primary teacher's heads (`teacher_cls`, ...), or through those of the
    teacher named `teacher` (`NAME_cls`, ...: no other teacher is named "teacher", so the names never collide)."""
    return tuple(f"{teacher or 'teacher'}_{part}" for part in TOKEN_OUTPUTS)


def onnxruntime():
    """The onnxruntime module, or a one-line error naming the extra that installs it."""
    try:
        import onnx  # noqa: F401  (the exporter and the quantiser need it beside the runtime)
        import onnxruntime as ort
    except ImportError as err:
        raise UserError(f"ONNX export and onnx: models need the optional packages onnx and onnxruntime "
                        f"({err.name} is missing); pip install 'tipsdistill[onnx]'") from None
    return ort


def open_session(path: Path):
    ort = onnxruntime()
    options = ort.SessionOptions()
    # As many threads as torch uses, so OMP_NUM_THREADS / torch.set_num_threads limit both runtimes alike.
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxTeacher(Teacher):
    """`outputs`: the backbone's tokens, or (`teacher_space()`) the projection heads' outputs of an export made
    `--with-heads`, at that teacher's `width`, the heads having `head_params`."""

    runtime = "onnxruntime"  # the cost columns count no torch FLOPs or allocations for it

    def __init__(self, directory: Path, config: dict, vision, vision_value, text, tokenizer, fingerprint: str,
                 outputs: tuple[str, ...] = TOKEN_OUTPUTS, width: int | None = None, head_params: int | None = None):
        super().__init__(
            width=width or config["width"],
            patch_size=config["patch_size"], image_size=config["image_size"],
            num_registers=config["num_registers"], fingerprint=fingerprint,
            temperature=config.get("temperature"), tokenizer=tokenizer if text is not None else None,
        )
        self.directory, self.config, self.outputs, self.head_params = directory, config, outputs, head_params
        self.quantization = config.get("quantization")
        self.text_max_length = config.get("text_max_length")
        self.vision, self.vision_value, self.text = vision, vision_value, text

    @property
    def has_text(self) -> bool:
        return self.text is not None and self.tokenizer is not None

    def drop_text(self) -> "OnnxTeacher":
        self.text, self.tokenizer = None, None  # the onnxruntime session goes with its last reference
        return self

    @property
    def teacher_width(self) -> int | None:
        return self.config.get("teacher_width")

    @property
    def metadata(self) -> dict:
        """What a student checkpoint's metadata holds of its teacher (spec, fingerprint), for `DIR@teacher`."""
        return {"teacher": self.config.get("teacher")}

    def teacher_space(self, teacher: str | None = None) -> "OnnxTeacher":
        """The same graphs read at their projection heads' outputs (the student in its primary teacher's space, or
        in that of the teacher named `teacher`)."""
        if self.teacher_width is None:
            raise UserError(f"onnx:{self.directory} was exported without --with-heads; expected an export with the "
                            "projection heads to read it in its teacher's space")
        heads = self.config.get("teacher_heads") or {}
        if teacher is not None and teacher not in heads:
            raise UserError(f"onnx:{self.directory} has no heads for teacher {teacher!r}; expected one of "
                            f"{', '.join(heads) or '(none: a one-teacher export)'}")
        width, params = ((self.teacher_width, self.config.get("head_params")) if teacher is None
                         else (heads[teacher]["teacher_width"], heads[teacher]["head_params"]))
        # The same files, so the same fingerprint: no second pass over the graphs.
        return OnnxTeacher(self.directory, self.config, self.vision, self.vision_value, None, None, self.fingerprint,
                           outputs=head_outputs(teacher), width=width, head_params=params)

    def graph_parameters(self) -> int | None:
        """The PyTorch model's image-path parameters, recorded at export (the graph's stored weights differ:
        tracing folds constants and drops what the forward never reads); with the heads in teacher space."""
        vision = self.config.get("vision_params")
        return None if vision is None else vision + (self.head_params or 0)

    # No torch parameters to ask: the graphs take float32 on the CPU.
    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _image_tokens(self, pixels: torch.Tensor, value_trick: bool) -> ImageTokens:
        session = self.vision_value if value_trick else self.vision
        if session is None:
            raise UserError(f"{self.directory} has no {VISION_VALUE}; re-export it with tipsdistill export "
                            f"--format onnx, or evaluate with value_trick off")
        outputs = session.run(list(self.outputs), {"pixels": pixels.contiguous().numpy()})
        return ImageTokens(*(torch.from_numpy(array) for array in outputs))

    @property
    def text_tokenizer(self) -> TextTokenizer:
        return TextTokenizer(self.tokenizer, self.text_max_length)

    def _text_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        (features,) = self.text.run([TEXT_OUTPUT], {name: tokens[name].numpy() for name in TEXT_INPUTS})
        return torch.from_numpy(features)


def _fingerprint(directory: Path) -> str:
    """sha256 of every file but the model card: graphs (and any external data), tokenizer and config, so an int8
    export differs from its fp32 one."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.name != "README.md"):
        digest.update(f"\n{path.name}\n".encode())
        with path.open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_config(directory: Path) -> dict:
    if not directory.is_dir():
        raise UserError(f"onnx:{directory}: no such directory; expected a tipsdistill export --format onnx directory")
    for name in (CONFIG, VISION):
        if not (directory / name).is_file():
            raise UserError(f"onnx:{directory} has no {name}; expected a tipsdistill export --format onnx directory")
    config = json.loads((directory / CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise UserError(f"onnx:{directory}/{CONFIG} has format {config.get('format')!r}; expected {FORMAT!r}")
    return config


def load(directory: Path) -> OnnxTeacher:
    directory = Path(directory).expanduser()
    config = read_config(directory)
    value = directory / VISION_VALUE
    text = directory / TEXT
    has_tokenizer = (directory / "tokenizer_config.json").is_file()
    return OnnxTeacher(
        directory, config, open_session(directory / VISION), open_session(value) if value.is_file() else None,
        open_session(text) if text.is_file() else None, load_tokenizer(directory) if has_tokenizer else None,
        _fingerprint(directory),
    )
