"""What a recipe costs: FLOPs per image from the architecture, GPU-hours per 100M samples, memory per GPU and
the storage of a teacher-target cache.

Counted as matmul FLOPs (2 per multiply-add): 2 x tokens x (per-layer weight matrices) + the
attention scores and mixing (4 x tokens^2 x width per layer) + the patch embedding. Training one
image costs the teacher forward (every teacher's, each at its own view size, with `teachers:`), 3x the
student forward (forward + backward) including the projection heads (a set per teacher), and the text
towers for the two captions (CLS1 and CLS2) at 64 tokens: 3x when the student's own tower is trained,
1x through the frozen (primary) teacher tower. GPU-hours assume a peak
throughput and a model-FLOPs utilisation (MFU), both recorded in the recipe's `compute:` section.

Memory per GPU counts model state only (weights, gradients, optimizer state; no activations), from parameter counts
of the recipe's models built on the meta device (no memory, under a second even for g/14). Cache storage counts the
tensors `distill.cache.writer` stores per image.

`python -m distill.compute RECIPE [key=value ...] [--gpus N]` prints the estimate, the memory per GPU over N GPUs
and the cache storage per image, as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass

import torch
from transformers import Tipsv2TextConfig, Tipsv2TextModel, Tipsv2VisionConfig, Tipsv2VisionModel

from distill.config import ComputeConfig, Recipe, TeacherConfig, own_input_size
from distill.recipe_loader import load_recipe
from students import get_arch
from teachers.tipsv2_sizes import tipsv2_config

TEXT_TOKENS = 64  # TIPSv2 pads captions to 64 tokens
CAPTIONS_PER_IMAGE = 2  # CLS1 <-> alt-text, CLS2 <-> a synthetic caption


@dataclass
class ComputeEstimate:
    assumed: ComputeConfig  # teacher shapes, GPU, peak throughput and MFU the figures are for
    teacher_gflops_per_image: float  # forward, every teacher's
    student_gflops_per_image: float  # forward, vision tower + heads
    train_gflops_per_image: float  # teacher forward + student forward/backward + text towers
    gpu_hours_per_100m_samples: float
    teacher_gpu_hours_per_1m_images: float  # the teacher forward alone: a cache build, per crop stored
    cached_gpu_hours_per_100m_samples: float  # training from a cache: all of the above but the teacher forward


def _mlp_hidden(config: Tipsv2VisionConfig) -> int:
    hidden = int(config.hidden_size * config.mlp_ratio)
    return (int(hidden * 2 / 3) + 7) // 8 * 8 if config.use_swiglu_ffn else hidden


def vision_flops(config: Tipsv2VisionConfig, image_size: int) -> float:
    d, p = config.hidden_size, config.patch_size
    patches = (image_size // p) ** 2
    tokens = 1 + config.num_register_tokens + patches
    per_layer = 4 * d * d + (3 if config.use_swiglu_ffn else 2) * d * _mlp_hidden(config)
    return (2 * tokens * config.num_hidden_layers * per_layer + 4 * config.num_hidden_layers * tokens**2 * d
            + 2 * patches * 3 * p * p * d)


def text_flops(config: Tipsv2TextConfig, tokens: int = TEXT_TOKENS) -> float:
    d = config.hidden_size
    per_layer = 4 * d * d + 2 * d * config.intermediate_size
    return 2 * tokens * config.num_hidden_layers * per_layer + 4 * config.num_hidden_layers * tokens**2 * d


def other_teachers(recipe: Recipe) -> list[tuple[TeacherConfig, str]]:
    """The teachers after the first, each with the TIPSv2 size whose shape it is counted as (`compute.teacher_archs`)."""
    archs = (recipe.compute or ComputeConfig()).teacher_archs
    return [(t, archs[t.name]) for t in recipe.run_teachers[1:]]


def _phase_flops(recipe: Recipe, teacher, others, student, s_size: int, t_size: int) -> tuple[float, float, float]:
    """(teachers' forward, student forward + heads, whole training image) FLOPs at one pair of view sizes; `others`:
    (TeacherConfig, Tipsv2Config) of the other teachers, each at its own image size or else the run's teacher view
    (as the run feeds them)."""
    teacher_f = vision_flops(teacher.vision_config, t_size) + sum(
        vision_flops(shape.vision_config, t.image_size or t_size) for t, shape in others)
    s_tokens = 1 + student.vision_config.num_register_tokens + (s_size // student.vision_config.patch_size) ** 2
    head_width = teacher.vision_config.hidden_size + sum(shape.vision_config.hidden_size for _, shape in others)
    student_f = vision_flops(student.vision_config, s_size) + 2 * s_tokens * student.vision_config.hidden_size * head_width
    train_f = teacher_f + 3 * student_f
    c = recipe.loss.contrastive
    if c.kind != "none":
        if c.text_tower == "student":
            train_f += CAPTIONS_PER_IMAGE * 3 * text_flops(student.text_config)
        else:
            train_f += CAPTIONS_PER_IMAGE * text_flops(teacher.text_config)
    return teacher_f, student_f, train_f


def estimate_compute(recipe: Recipe) -> ComputeEstimate:
    """The run's cost for the recipe's `compute` section (teacher_arch and teacher_archs, GPU peak and MFU): per
    image, averaged over the run's steps when resolution phases change the view sizes; for the first student of a
    `students:` list."""
    assumed = recipe.compute or ComputeConfig()
    teacher = tipsv2_config(assumed.teacher_arch)
    others = [(t, tipsv2_config(arch)) for t, arch in other_teachers(recipe)]
    student = get_arch(recipe.run_students[0].name).config
    total = [0.0, 0.0, 0.0]
    for first, end, s_size, t_size in recipe.phases():
        weight = (end - first) / recipe.train.max_steps
        for i, flops in enumerate(_phase_flops(recipe, teacher, others, student, s_size, t_size)):
            total[i] += weight * flops
    teacher_f, student_f, train_f = total

    def hours(samples: float, flops: float) -> float:
        return samples * flops / (assumed.gpu_peak_tflops * 1e12 * assumed.mfu) / 3600

    return ComputeEstimate(assumed, teacher_gflops_per_image=teacher_f / 1e9, student_gflops_per_image=student_f / 1e9,
                           train_gflops_per_image=train_f / 1e9, gpu_hours_per_100m_samples=hours(1e8, train_f),
                           teacher_gpu_hours_per_1m_images=hours(1e6, teacher_f),
                           cached_gpu_hours_per_100m_samples=hours(1e8, train_f - teacher_f))


# ---------------------------------------------------------------- memory per GPU

GIB = 2**30
FP32 = 4
TEACHER_BYTES = {"bf16": 2, "fp16": 2}  # the frozen teacher runs in the training precision on a GPU, else fp32


@dataclass
class MemoryEstimate:
    """Model state per GPU, in GiB, for a run over `processes` GPUs; activations are not counted."""

    processes: int
    teacher_params: int  # frozen: vision + text towers, as loaded (the text tower too), and the other teachers'
    #                      vision towers (with `teachers:`); 0 with cache=DIR
    student_params: int  # trained: every student's towers and projection heads, and the contrastive term's own
    teacher_gib: float  # in the training precision, on every GPU
    student_weights_gib: float  # fp32 (mixed precision autocasts the matmuls, the weights stay fp32)
    student_grads_gib: float  # fp32
    ddp_buckets_gib: float  # DDP's all-reduce buckets: a second fp32 copy of the gradients
    adamw_gib: float  # AdamW's two fp32 moments
    ddp_gib: float  # per GPU under DDP (what the toolkit runs): everything replicated
    sharded_gib: float  # FSDP full shard / ZeRO-3: the student's weights, gradients and AdamW state split over the
    #                     GPUs, the frozen teacher replicated
    sharded_teacher_too_gib: float  # the same with the teacher's weights sharded too


def _params(module: torch.nn.Module, trained: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trained)


def tower_params(arch: str) -> tuple[int, int]:
    """(vision, text) parameters of a released TIPSv2 size, counted on the meta device (vision at 448 px)."""
    config = tipsv2_config(arch)
    with torch.device("meta"):
        return _params(Tipsv2VisionModel(config.vision_config)), _params(Tipsv2TextModel(config.text_config))


def trained_params(recipe: Recipe) -> int:
    """What the optimizer updates: each student of the recipe as its distillation task builds it (towers at its
    image size, heads to each teacher's width, the text tower when it reads the captions, 32k vocabulary) plus the
    contrastive term's parameters (the projection of the teacher's text, the temperature and bias)."""
    from distill.contrastive import CaptionContrastive
    from students import build_student

    teacher = tipsv2_config((recipe.compute or ComputeConfig()).teacher_arch)
    c = recipe.loss.contrastive
    contrastive = c.kind != "none"
    total = 0
    with torch.device("meta"):
        for entry in recipe.run_students:
            student = build_student(entry.name, teacher_width=teacher.vision_config.hidden_size,
                                    text=contrastive and c.text_tower == "student", image_size=entry.image_size,
                                    head=entry.head, timm_kwargs=entry.timm_kwargs, feature_stride=entry.feature_stride)
            for t, arch in other_teachers(recipe):
                student.add_teacher_heads(t.name, tipsv2_config(arch).vision_config.hidden_size, entry.head)
            total += _params(student, trained=True)
            if contrastive:
                total += _params(CaptionContrastive(c, student, teacher.text_config.hidden_size), trained=True)
    return total


def memory_per_gpu(recipe: Recipe, processes: int) -> MemoryEstimate:
    """Weights, gradients and AdamW state per GPU of the recipe's run over `processes` GPUs (`compute.teacher_arch`
    as the teacher): replicated under DDP, and what sharding the student's state (FSDP, ZeRO-3) would leave."""
    teacher = 0 if recipe.cache else sum(tower_params((recipe.compute or ComputeConfig()).teacher_arch)) + sum(
        tower_params(arch)[0] for _, arch in other_teachers(recipe))
    student = trained_params(recipe)
    teacher_gib = teacher * TEACHER_BYTES.get(recipe.train.mixed_precision, FP32) / GIB
    weights = grads = buckets = student * FP32 / GIB
    adamw = 2 * student * FP32 / GIB
    state = weights + grads + adamw
    return MemoryEstimate(processes, teacher, student, teacher_gib, weights, grads, buckets, adamw,
                          ddp_gib=teacher_gib + state + buckets, sharded_gib=teacher_gib + state / processes,
                          sharded_teacher_too_gib=(teacher_gib + state) / processes)


# ---------------------------------------------------------------- cache storage

INDEX_BYTES = 8 + 5 * 8  # per stored crop: the row's image index and its crop box + flip, int64 (distill.cache.writer)


def cache_bytes_per_image(teacher, image_size: int, dtype: str = "bf16", compression: str = "none",
                          augmentations: int = 1) -> int:
    """Bytes a cache stores per image with `augmentations` crops of `teacher` (a released TIPSv2 size such as
    "g14", or a loaded teacher) at `image_size` px: per crop its index and crop row, CLS1 and the registers in
    `dtype`, and the patch grid as `compression` stores it (`none`: `dtype`; `int8`: one byte per value and an
    fp32 scale per token; `pca:N`: N codes per token in `dtype`). Shard headers and the manifest are not counted;
    the PCA basis is `cache_basis_bytes`."""
    from distill.cache.compression import Compression, storage_dtype

    if isinstance(teacher, str):
        vision = tipsv2_config(teacher).vision_config
        width, patch, registers = vision.hidden_size, vision.patch_size, vision.num_register_tokens
    else:
        width, patch, registers = teacher.width, teacher.patch_size, teacher.num_registers
    size, patches = storage_dtype(dtype).itemsize, (image_size // patch) ** 2
    kind = Compression.parse(compression)
    patch_bytes = {"none": patches * width * size, "int8": patches * (width + FP32),
                   "pca": patches * kind.components * size}[kind.kind]
    return augmentations * (INDEX_BYTES + (1 + registers) * width * size + patch_bytes)


def cache_basis_bytes(teacher, compression: str) -> int:
    """The one PCA basis of a `pca:N` cache (mean and N components, fp32); 0 otherwise."""
    from distill.cache.compression import Compression

    kind = Compression.parse(compression)
    width = tipsv2_config(teacher).vision_config.hidden_size if isinstance(teacher, str) else teacher.width
    return (kind.components + 1) * width * FP32 if kind.kind == "pca" else 0


# The storage forms the docs compare: (--dtype, --compress)
CACHE_FORMS = {"bf16": ("bf16", "none"), "int8": ("bf16", "int8"), "pca:256": ("bf16", "pca:256")}


def cache_storage(recipe: Recipe) -> dict:
    """MB per image per crop at each teacher view size the recipe uses, for each storage form: with `teachers:`, the
    sum of every teacher's cache, each at its own input size and counted as its `compute.teacher_archs` shape."""
    teachers = recipe.run_teachers
    archs = [(recipe.compute or ComputeConfig()).teacher_arch, *(arch for _, arch in other_teachers(recipe))]
    own = [own_input_size(teachers, i) for i in range(len(archs))]

    def mb(view: int, dtype: str, compression: str) -> float:
        return sum(cache_bytes_per_image(arch, size or view, dtype, compression)
                   for arch, size in zip(archs, own)) / 1e6

    return {str(view): {form: mb(view, *storage) for form, storage in CACHE_FORMS.items()}
            for view in sorted({t_size for *_, t_size in recipe.phases()})}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distill.compute", description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs the memory per GPU is for (default 8)")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    print(json.dumps({**dataclasses.asdict(estimate_compute(recipe)),
                      "memory_per_gpu": dataclasses.asdict(memory_per_gpu(recipe, args.gpus)),
                      "cache_mb_per_image_per_crop": cache_storage(recipe)}, indent=1))


if __name__ == "__main__":
    main()
