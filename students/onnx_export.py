"""`tipsdistill export --format onnx [--quantize int8]`: the student's towers as onnxruntime graphs.

Graphs (`teachers.sources.onnx_source` reads them back as `onnx:DIR`):
  vision.onnx        pixels (B,3,H,W) in [0,1] -> cls (B,D), registers (B,R,D), patches (B,H/p,W/p,D)
  vision_value.onnx  the same with the MaskCLIP value trick (zero-shot segmentation's default)
  text.onnx          input_ids, attention_mask (B,L) int64 -> text_features (B,D), unnormalised
With heads (`--with-heads`) the vision graphs also give teacher_cls, teacher_registers, teacher_patches, and for a
student of several teachers NAME_cls, NAME_registers, NAME_patches through each other teacher's heads.
Batch, image height/width and text length are dynamic axes.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`. The torch.export-based one needs the
`onnxscript` package, which this toolkit does not depend on; tracing these towers needs nothing beyond torch
(https://docs.pytorch.org/docs/stable/onnx_torchscript.html). transformers' TIPSv2 resamples its position
embedding with `F.interpolate(mode="bilinear", antialias=True)`, an op the TorchScript exporter has no
symbolic for; ONNX `Resize` has had `antialias` since opset 18, and with `exclude_outside=1` it renormalises
the filter inside the grid as torch's antialiased kernel does (https://onnx.ai/onnx/operators/onnx__Resize.html),
so it is registered for the export with `torch.onnx.register_custom_op_symbolic` and resolution stays dynamic.

Every graph is run by onnxruntime against PyTorch before anything is written: two batch sizes, and for the
vision graphs a second, non-square resolution (one side up, one down). int8 is onnxruntime's dynamic
quantisation (weights int8, activations quantised on the fly; https://onnxruntime.ai/docs/performance/
model-optimizations/quantization.html), checked by the cosine of its tokens to PyTorch's.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from students.model import Student
from students.model_card import model_card
from teachers.sources.onnx_source import (
    CONFIG, FORMAT, TEXT, TEXT_INPUTS, TEXT_OUTPUT, TOKEN_OUTPUTS, VISION, VISION_VALUE, head_outputs, onnxruntime,
    open_session,
)
from common.errors import UserError

QUANTIZATIONS = ("int8",)
OPSET = 18  # Resize's antialias attribute
# fp32 parity: max |onnxruntime - torch| <= PARITY_TOLERANCE * max(1, max |torch|) per output. Reordered fp32
# sums differ by ~1e-7 relative per op; the micro students measure ~1e-6 through their blocks, and the deep
# released shapes stay well below 1e-4, while a wrongly converted op errs by the size of the values themselves.
PARITY_TOLERANCE = 1e-4
# int8: the mean cosine of every quantised token (and text feature) to PyTorch's fp32 one; dynamic int8 keeps
# it at 0.9999 on the micro students, a broken graph (or a tower int8 cannot hold) falls far below.
INT8_MIN_COSINE = 0.9


class _VisionGraph(nn.Module):
    """`teachers`: the heads it also projects through (None: the primary teacher's), in output order."""

    def __init__(self, student: Student, value_trick: bool, teachers: list[str | None]):
        super().__init__()
        self.student, self.value_trick, self.teachers = student, value_trick, teachers

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens = self.student.image_tokens(pixels, value_trick=self.value_trick)
        outputs = (tokens.cls, tokens.registers, tokens.patches)
        for teacher in self.teachers:
            projected = self.student.project(tokens, teacher)
            outputs += (projected.cls, projected.registers, projected.patches)
        return outputs


class _TextGraph(nn.Module):
    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.student.text_features(input_ids, attention_mask)


def _resize_antialias(g, pixels, output_size, align_corners, scale_factors, mode="linear"):
    """ONNX symbolic for aten::_upsample_{bilinear,bicubic}2d_aa (size given, align_corners=False: what transformers
    and timm call). torch's antialiased bicubic is PIL's, cubic coefficient -0.5 (ONNX's default: -0.75)."""
    start, stop = g.op("Constant", value_t=torch.tensor([0])), g.op("Constant", value_t=torch.tensor([2]))
    leading = g.op("Slice", g.op("Shape", pixels), start, stop)  # batch, channels
    sizes = g.op("Concat", leading, g.op("Cast", output_size, to_i=7), axis_i=0)  # 7: INT64
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    return g.op("Resize", pixels, empty, empty, sizes, antialias_i=1, exclude_outside_i=1,
                coordinate_transformation_mode_s="half_pixel", mode_s=mode, cubic_coeff_a_f=-0.5)


# transformers' TIPSv2 resamples position embeddings bilinearly, timm's ViTs (dynamic_img_size) bicubically.
_ANTIALIASED = {"aten::_upsample_bilinear2d_aa": "linear", "aten::_upsample_bicubic2d_aa": "cubic"}


@contextmanager
def _antialias_symbolic():
    for name, mode in _ANTIALIASED.items():
        torch.onnx.register_custom_op_symbolic(name, partial(_resize_antialias, mode=mode), OPSET)
    try:
        yield
    finally:
        for name in _ANTIALIASED:
            torch.onnx.unregister_custom_op_symbolic(name, OPSET)


def _trace(module: nn.Module, example: tuple, path: Path, inputs: tuple, outputs: tuple, axes: dict) -> None:
    with _antialias_symbolic(), warnings.catch_warnings():
        # Tracing warns about shape checks turned into constants (image size vs patch size, causal masks); the
        # parity runs at other batch sizes and resolutions are what shows the graph generalises.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy-exporter notice; see the module doc
        # Gathers at arange positions (text position ids, mask rows): the negative indices it warns of never occur.
        warnings.filterwarnings("ignore", "Exporting aten::index operator of advanced indexing")
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=OPSET, input_names=list(inputs),
                          output_names=list(outputs), dynamic_axes=axes)


def _vision_axes(outputs: tuple[str, ...]) -> dict:
    token_axes = {"cls": {0: "batch"}, "registers": {0: "batch"}, "patches": {0: "batch", 1: "grid_h", 2: "grid_w"}}
    return {"pixels": {0: "batch", 2: "height", 3: "width"},
            **{name: token_axes[name.rsplit("_", 1)[-1]] for name in outputs}}


def _vision_cases(student: Student) -> list[tuple[torch.Tensor]]:
    size, step = student.image_size, student.input_multiple
    generator = torch.Generator().manual_seed(0)
    shapes = [(1, size, size), (3, size, size), (2, size + 2 * step, max(step, size // 2 // step * step))]
    if student.fixed_size:  # e.g. a timm ViT without dynamic_img_size: no other resolution to check
        shapes = shapes[:2]
    return [(torch.rand(b, 3, h, w, generator=generator),) for b, h, w in shapes]


def _text_cases(student: Student) -> list[tuple[torch.Tensor, torch.Tensor]]:
    config = student.text.config
    generator = torch.Generator().manual_seed(0)
    cases = []
    for batch, length in ((1, min(5, config.max_position_embeddings)), (3, min(9, config.max_position_embeddings))):
        ids = torch.randint(0, config.vocab_size, (batch, length), generator=generator)
        mask = torch.ones(batch, length, dtype=torch.int64)
        mask[1:, length // 2 :] = 0  # padded rows, as a batch of texts of different lengths has
        cases.append((ids, mask))
    return cases


def _run(session, names: tuple[str, ...], case: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    return session.run(None, {name: x.numpy() for name, x in zip(names, case)})


def _reference(module: nn.Module, case: tuple) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*case)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _fp32_parity(name: str, module: nn.Module, session, inputs: tuple, cases: list) -> str:
    """The max abs difference over outputs and cases; above tolerance the export stops (nothing written)."""
    worst, scale = 0.0, 1.0
    for case in cases:
        for got, want in zip(_run(session, inputs, case), _reference(module, case)):
            diff, size = float(np.abs(got - want).max()), float(np.abs(want).max())
            if diff > PARITY_TOLERANCE * max(1.0, size):
                raise UserError(f"{name}: onnxruntime differs from PyTorch by {diff:.3g} (outputs up to {size:.3g}; "
                                f"tolerance {PARITY_TOLERANCE:g} relative); nothing written")
            worst, scale = max(worst, diff), max(scale, size)
    shapes = ", ".join("x".join(map(str, case[0].shape)) for case in cases)
    return f"{name}: max abs diff {worst:.2g} vs PyTorch (outputs up to {scale:.3g}) at {shapes}"


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def _int8_parity(name: str, module: nn.Module, session, inputs: tuple, cases: list) -> str:
    cosines = np.concatenate([_cosine(got, want) for case in cases
                              for got, want in zip(_run(session, inputs, case), _reference(module, case))])
    mean = float(cosines.mean())
    if not mean >= INT8_MIN_COSINE:
        raise UserError(f"{name}: int8 tokens have mean cosine {mean:.3f} to PyTorch's (expected >= "
                        f"{INT8_MIN_COSINE}); nothing written")
    return f"{name} int8: token cosine to PyTorch fp32 mean {mean:.4f}, min {float(cosines.min()):.4f}"


def _quantize_int8(path: Path) -> None:
    """onnxruntime's recommended pre-processing (graph optimisation, shape inference), then dynamic int8. Its
    symbolic shape inference cannot follow the dynamic-size Resize, so ONNX's own shape inference does that part."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, prepared = path.with_suffix(".fp32.onnx"), path.with_suffix(".prepared.onnx")
    path.rename(fp32)
    quant_pre_process(fp32, prepared, skip_symbolic_shape=True)
    quantize_dynamic(prepared, path, weight_type=QuantType.QInt8)
    fp32.unlink()
    prepared.unlink()


def _graph(out: Path, name: str, module: nn.Module, inputs: tuple, outputs: tuple, axes: dict,
           cases: list, quantize: str | None) -> str:
    """Export one graph, quantise it on request, and check it against PyTorch; returns the parity note."""
    # The exporter restores the wrapper's mode after tracing, and with it the student's: a wrapper left in
    # training mode would give the parity reference batch-norm batch statistics (timm convnets).
    module.eval()
    _trace(module, cases[-1], out / name, inputs, outputs, axes)  # the largest case: batch > 1, padded text
    if quantize:
        _quantize_int8(out / name)
    check: Callable = _int8_parity if quantize else _fp32_parity
    return check(name, module, open_session(out / name), inputs, cases)


def export_onnx(student: Student, out: Path, evaluation: list[str], *, with_heads: bool = False,
                quantize: str | None = None) -> list[str]:
    onnxruntime()  # a missing extra fails before the tracing
    teachers = [None, *student.teacher_heads] if with_heads else []
    outputs = TOKEN_OUTPUTS + tuple(name for teacher in teachers for name in head_outputs(teacher))
    notes = []
    for name, value_trick in ((VISION, False), (VISION_VALUE, True)):
        notes.append(_graph(out, name, _VisionGraph(student, value_trick, teachers), ("pixels",), outputs,
                            _vision_axes(outputs), _vision_cases(student), quantize))
    if student.text is not None:
        axes = {name: {0: "batch", 1: "length"} for name in TEXT_INPUTS} | {TEXT_OUTPUT: {0: "batch"}}
        notes.append(_graph(out, TEXT, _TextGraph(student), TEXT_INPUTS, (TEXT_OUTPUT,), axes,
                            _text_cases(student), quantize))
    else:
        notes.append("the student has no text tower: no text.onnx")
    if student.tokenizer is not None:
        student.tokenizer.save_pretrained(out)
    (out / CONFIG).write_text(json.dumps(_config(student, with_heads, quantize, notes), indent=2))
    (out / "README.md").write_text(model_card(student, evaluation, "onnx", _usage(student)))
    return notes


def _config(student: Student, with_heads: bool, quantize: str | None, parity: list[str]) -> dict:
    text = student.text
    return {
        "format": FORMAT, "version": 1, "name": student.name, "image_size": student.image_size,
        "patch_size": student.patch_size, "width": student.width, "num_registers": student.num_registers,
        "temperature": None if text is None else float(student.temperature.detach()),
        "text_max_length": None if text is None else text.config.max_position_embeddings,
        "teacher_width": student.teacher_width if with_heads else None,
        "vision_params": sum(p.numel() for p in student.vision.parameters()),
        "head_params": sum(p.numel() for p in student.heads.parameters()) if with_heads else None,
        # `onnx:DIR@teacher` pairs the heads with this teacher's text tower, checked by fingerprint; `onnx:DIR@NAME`
        # pairs another teacher's heads (`teacher_heads`) with its record under `teachers`.
        "teacher": student.metadata.get("teacher") if with_heads else None,
        **({"teacher_heads": {name: {"teacher_width": heads.teacher_width, "outputs": list(head_outputs(name)),
                                     "head_params": sum(p.numel() for p in heads.parameters())}
                              for name, heads in student.teacher_heads.items()}}
           if with_heads and len(student.teacher_heads) else {}),
        "opset": OPSET, "quantization": quantize, "dynamic_axes": ["batch", "height", "width", "text length"],
        "exporter": f"torch.onnx.export (TorchScript) torch {torch.__version__}", "parity": parity,
    }


def _usage(student: Student) -> str:
    usage = ("import numpy as np, onnxruntime as ort\n"
             f"vision = ort.InferenceSession('DIR/{VISION}')  # {VISION_VALUE}: MaskCLIP value trick\n"
             "cls, registers, patches = vision.run(None, {'pixels': rgb01_nchw.astype(np.float32)})[:3]")
    if student.text is not None:
        usage += (f"\ntext = ort.InferenceSession('DIR/{TEXT}')  # tokenizer: AutoTokenizer.from_pretrained('DIR')\n"
                  "features = text.run(None, {'input_ids': ids, 'attention_mask': mask})[0]  # int64 (B, L)")
    return usage + "\n# or, with tipsdistill: teachers.load_teacher('onnx:DIR').encode_image(pixels)"
