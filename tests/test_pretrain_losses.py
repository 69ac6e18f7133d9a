"""Self-distillation losses and EMA of the TIPSv2 pretraining objective, without the training loop."""
from __future__ import annotations

import pytest
import torch
from distill.config import LossConfig
from distill.ema import ema_momentum
from distill.losses.dino_cls_loss import DinoClsLoss
from distill.losses.ibot_patch_loss import IbotPatchLoss
from distill.losses.prototype_targets import sinkhorn_knopp
from distill.config import PretrainConfig
from distill.tasks.pretrain_task import PretrainTask
from students import build_student


def _patch_grad(tokens: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    student = torch.randn(2, 6, 16, requires_grad=True)
    teacher = torch.randn(2, 6, 16)
    mask = torch.tensor([[True, False, True, False, False, False], [False, True, False, False, True, False]])
    IbotPatchLoss(16, tokens=tokens)(student, teacher, mask).backward()
    return student.grad.abs().sum(-1), mask


def test_ibot_plus_plus_touches_visible_tokens_and_ibot_does_not():
    grad_all, mask = _patch_grad("all")
    assert (grad_all[~mask] > 0).all() and (grad_all[mask] > 0).all()
    grad_masked, mask = _patch_grad("masked")
    assert (grad_masked[~mask] == 0).all() and (grad_masked[mask] > 0).all()


def test_dino_loss_skips_same_view_and_is_lowest_for_matching_views():
    loss = DinoClsLoss(8, centering="center")
    loss.eval()  # no centre update
    teacher = [torch.randn(4, 8) * 5, torch.randn(4, 8) * 5]
    matching = loss([teacher[1] * 3, teacher[0] * 3], [], teacher)  # each student view sees the other's target
    crossed = loss([teacher[0] * 3, teacher[1] * 3], [], teacher)
    assert matching < crossed
    with pytest.raises(ValueError):
        loss([teacher[0]], [], [teacher[0]])


def test_dino_loss_averages_every_intended_pair():
    """1 student global view (= teacher view 0) + 2 local crops against 2 teacher views: the global view pairs
    with teacher view 1 only, each local crop with both teacher views: 5 pairs (DINO, arXiv 2104.14294)."""
    torch.manual_seed(0)
    loss = DinoClsLoss(8, student_temp=0.1, teacher_temp=0.04)
    loss.eval()
    teacher = [torch.randn(4, 8), torch.randn(4, 8)]
    glob, local = torch.randn(4, 8), [torch.randn(4, 8), torch.randn(4, 8)]

    def h(student, target):  # cross-entropy of the sharpened teacher softmax and the student softmax, by hand
        p = torch.softmax(target / 0.04, dim=-1)
        return -(p * torch.log_softmax(student / 0.1, dim=-1)).sum(-1).mean()

    expected = (h(glob, teacher[1]) + h(local[0], teacher[0]) + h(local[0], teacher[1])
                + h(local[1], teacher[0]) + h(local[1], teacher[1])) / 5
    assert loss([glob], local, teacher) == pytest.approx(float(expected), rel=1e-6)


def test_centre_moves_in_training_and_sinkhorn_balances_prototypes():
    loss = DinoClsLoss(8)
    before = loss.targets.center.clone()
    loss([torch.randn(4, 8)], [torch.randn(4, 8)], [torch.randn(4, 8) + 3, torch.randn(4, 8)])
    assert not torch.equal(before, loss.targets.center)
    q = sinkhorn_knopp(torch.randn(64, 8) + torch.arange(8.0), temperature=0.5, iterations=10)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-4)
    assert q.sum(0).std() / q.sum(0).mean() < 0.05  # every prototype used about equally


def _pretrainer(tokenizer, ema: str) -> PretrainTask:
    torch.manual_seed(0)
    student = build_student("tipsv2-nano", text=True, tokenizer=tokenizer, image_size=32)
    config = PretrainConfig(ema=ema, num_prototypes=32, head_hidden=32, head_bottleneck=16, local_crops=1,
                            local_size=16)
    return PretrainTask(student, config, LossConfig())


def _count(params) -> int:
    return sum(p.numel() for p in params)


def test_head_only_ema_has_no_backbone_copy_and_trains_only_the_student(tiny_tokenizer):
    heads, full = _pretrainer(tiny_tokenizer, "heads"), _pretrainer(tiny_tokenizer, "full")
    # Trainable: the student (vision + text + temperature) and the two prototype heads, nothing else.
    student = _count(heads.student.parameters()) + _count(heads.heads.parameters())
    assert heads.ema_vision is None
    assert _count(p for p in heads.parameters() if p.requires_grad) == student
    assert _count(p for p in heads.parameters() if not p.requires_grad) == _count(heads.heads.parameters())
    # The full EMA keeps a second vision tower in memory; the trainable set is the same.
    assert _count(p for p in full.parameters() if p.requires_grad) == student
    assert _count(p for p in full.parameters() if not p.requires_grad) == (
        _count(full.heads.parameters()) + _count(full.student.vision.parameters()))


def test_ema_update_changes_only_the_heads(tiny_tokenizer):
    pretrainer = _pretrainer(tiny_tokenizer, "heads")
    with torch.no_grad():
        for p in pretrainer.heads.parameters():
            p.add_(1.0)
    frozen_before = {n: p.clone() for n, p in pretrainer.named_parameters() if not n.startswith("ema_heads")}
    ema_before = [p.clone() for p in pretrainer.ema_heads.parameters()]
    pretrainer.after_optimizer_step(0, 10)
    assert all(not torch.equal(a, b) for a, b in zip(ema_before, pretrainer.ema_heads.parameters()))
    assert all(torch.equal(frozen_before[n], p) for n, p in pretrainer.named_parameters() if n in frozen_before)


def test_momentum_ramps_to_one():
    assert ema_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert ema_momentum(100, 100, 0.99) == pytest.approx(1.0)


def test_self_distillation_backpropagates_into_backbone_and_heads_only(tiny_tokenizer):
    pretrainer = _pretrainer(tiny_tokenizer, "heads")
    pixels = torch.rand(3, 3, 32, 32)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[1, :6] = True
    # A second global view (the whole image, flipped) and one local crop, as the data pipeline draws them.
    views = torch.tensor([[[0, 0, 32, 32, 1], [8, 4, 16, 20, 0]]] * 3)
    losses = pretrainer.self_distillation(pixels, pretrainer.student.image_tokens(pixels), mask, views)
    (losses["dino"] + losses["ibot"]).backward()
    assert pretrainer.student.vision.embeddings.mask_token.grad.abs().sum() > 0
    assert pretrainer.heads["ibot"].prototypes.grad is not None
    assert all(p.grad is None for p in pretrainer.ema_heads.parameters())
