"""Shared fixtures: small random-weight TIPSv2 checkpoints written with the real libraries."""
from __future__ import annotations

import os

import pytest
import torch

# Two cores: keep torch from oversubscribing them when pytest and torch both spawn threads.
torch.set_num_threads(min(2, os.cpu_count() or 1))

CORPUS = [
    "a red circle", "a blue square", "a green triangle on a striped background",
    "a photo of a cat", "a photo of many dogs", "itap of a car.", "art of the tree.",
    "two objects: a large yellow star at the top left and a small purple circle",
]


def tiny_tipsv2_config(vocab_size: int, width: int = 32, depth: int = 2, heads: int = 2,
                       patch: int = 8, image_size: int = 32, swiglu: bool = False):
    from transformers import Tipsv2Config

    return Tipsv2Config(
        vision_config=dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                           mlp_ratio=4, patch_size=patch, image_size=image_size, use_swiglu_ffn=swiglu),
        text_config=dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                         intermediate_size=4 * width, vocab_size=vocab_size, max_position_embeddings=64),
    )


def perturbed_student(tokenizer):
    """A micro student with non-trivial registers and layer scales, so a mis-mapped or mis-converted weight shows
    in an export's outputs."""
    import students

    torch.manual_seed(0)
    student = students.build_student("tipsv2-micro", teacher_width=48, tokenizer=tokenizer)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if name != "temperature":
                p.add_(0.02 * torch.randn_like(p))
    return student


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from teachers.tokenizer import build_tokenizer

    return build_tokenizer(CORPUS, vocab_size=128)


@pytest.fixture(scope="session")
def tiny_tipsv2_dir(tmp_path_factory, tiny_tokenizer):
    """A random Tipsv2Model + tokenizer saved with `save_pretrained` (the hub directory layout)."""
    from transformers import Tipsv2Model

    torch.manual_seed(0)
    model = Tipsv2Model(tiny_tipsv2_config(vocab_size=len(tiny_tokenizer)))
    # Non-trivial layer scales / registers so tests notice a mis-mapped weight.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("tipsv2") / "tiny"
    model.save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_dinov2_dir(tmp_path_factory):
    """A random DINOv2-with-registers encoder saved with `save_pretrained`: a self-supervised teacher (no text
    tower), with 4 registers and patch 16 where the micro student has 1 and 8."""
    from transformers import BitImageProcessor, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("dinov2") / "tiny"
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=24, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=16, image_size=64,
        num_register_tokens=4)).save_pretrained(out)
    BitImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def two_teacher_student(tmp_path_factory, tiny_dinov2_dir):
    """The student of a 2-step micro run distilled from the packaged `micro` teacher (the primary, named `tips`)
    and the tiny DINOv2 (`dino`), as `tipsdistill distill` writes it."""
    from distill.recipe_loader import load_recipe
    from distill.run import run_training

    teachers = f"[{{name: tips, spec: micro}}, {{name: dino, spec: {tiny_dinov2_dir}, tokens: [cls, patches]}}]"
    recipe = load_recipe("micro", [f"teachers={teachers}", "max_steps=2", "batch_size=8", "data.options.length=16"])
    out = tmp_path_factory.mktemp("two_teachers") / "run"
    run_training(recipe, out)
    return out / "student"
