"""The online teacher is fast by construction: SDPA attention, frozen, no activations kept."""
import torch

import teachers


def test_loaded_teacher_runs_sdpa_frozen_in_inference_mode(tiny_tipsv2_dir):
    teacher = teachers.load_teacher(str(tiny_tipsv2_dir))
    assert teacher.vision.config._attn_implementation == "sdpa"
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()  # a parent module switched to training must not take the teacher along
    assert not teacher.training
    tokens = teacher.encode_image(torch.rand(2, 3, 32, 32, requires_grad=True))
    for t in (tokens.cls, tokens.registers, tokens.patches):
        assert not t.requires_grad and t.grad_fn is None  # no graph: no teacher activations kept
