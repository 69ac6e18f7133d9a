"""What a recipe costs: FLOPs per image from the architecture, and GPU-hours per 100M samples.

Counted as matmul FLOPs (2 per multiply-add): 2 x tokens x (per-layer weight matrices) + the
attention scores and mixing (4 x tokens^2 x width per layer) + the patch embedding. Training one
image costs the teacher forward, 3x the student forward (forward + backward) including the
projection heads, and the text towers for the two captions (CLS1 and CLS2) at 64 tokens: 3x when
the student's own tower is trained, 1x through the frozen teacher tower. GPU-hours assume a peak
throughput and a model-FLOPs utilisation (MFU), both recorded in the recipe's `compute:` section.

`python -m distill.compute RECIPE [key=value ...]` prints the estimate.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass

from transformers import Tipsv2TextConfig, Tipsv2VisionConfig

from distill.config import ComputeConfig, Recipe
from distill.recipe_loader import load_recipe
from students import get_arch
from teachers.tipsv2_sizes import tipsv2_config

TEXT_TOKENS = 64  # TIPSv2 pads captions to 64 tokens
CAPTIONS_PER_IMAGE = 2  # CLS1 <-> alt-text, CLS2 <-> a synthetic caption


@dataclass
class ComputeEstimate:
    assumed: ComputeConfig  # teacher shape, GPU, peak throughput and MFU the figures are for
    teacher_gflops_per_image: float  # forward
    student_gflops_per_image: float  # forward, vision tower + heads
    train_gflops_per_image: float  # teacher forward + student forward/backward + text towers
    gpu_hours_per_100m_samples: float


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


def _phase_flops(recipe: Recipe, teacher, student, s_size: int, t_size: int) -> tuple[float, float, float]:
    """(teacher forward, student forward + heads, whole training image) FLOPs at one pair of view sizes."""
    teacher_f = vision_flops(teacher.vision_config, t_size)
    s_tokens = 1 + student.vision_config.num_register_tokens + (s_size // student.vision_config.patch_size) ** 2
    student_f = (vision_flops(student.vision_config, s_size)
                 + 2 * s_tokens * student.vision_config.hidden_size * teacher.vision_config.hidden_size)
    train_f = teacher_f + 3 * student_f
    c = recipe.loss.contrastive
    if c.kind != "none":
        if c.text_tower == "student":
            train_f += CAPTIONS_PER_IMAGE * 3 * text_flops(student.text_config)
        else:
            train_f += CAPTIONS_PER_IMAGE * text_flops(teacher.text_config)
    return teacher_f, student_f, train_f


def estimate_compute(recipe: Recipe) -> ComputeEstimate:
    """The run's cost for the recipe's `compute` section (teacher_arch, GPU peak and MFU): per image,
    averaged over the run's steps when resolution phases change the view sizes; for the first student of a
    `students:` list."""
    assumed = recipe.compute or ComputeConfig()
    teacher = tipsv2_config(assumed.teacher_arch)
    student = get_arch(recipe.run_students[0].name).config
    total = [0.0, 0.0, 0.0]
    for first, end, s_size, t_size in recipe.phases():
        weight = (end - first) / recipe.train.max_steps
        for i, flops in enumerate(_phase_flops(recipe, teacher, student, s_size, t_size)):
            total[i] += weight * flops
    teacher_f, student_f, train_f = total
    seconds = 1e8 * train_f / (assumed.gpu_peak_tflops * 1e12 * assumed.mfu)
    return ComputeEstimate(assumed, teacher_gflops_per_image=teacher_f / 1e9, student_gflops_per_image=student_f / 1e9,
                           train_gflops_per_image=train_f / 1e9, gpu_hours_per_100m_samples=seconds / 3600)


if __name__ == "__main__":
    print(json.dumps(dataclasses.asdict(estimate_compute(load_recipe(sys.argv[1], sys.argv[2:]))), indent=1))
