"""Each recipe switch observed in the computation it controls, through the public commands (not the config).

Spies sit on what the toolkit cannot rename: transformers' `Tipsv2VisionModel.forward` (what the student
receives, and its output's gradient) and torch's loss functions (which distance or contrastive loss ran).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import Tipsv2VisionModel

from distill.cli import main
from teachers.tokenizer import tokenize

TINY_DISTILL = ["student.name=tipsv2-nano", "student.image_size=32", "data.options={size: 32, length: 8}",
                "train.batch_size=4", "train.log_every=1", "train.checkpoint_every=0", "optim.warmup_steps=0"]
TINY_PRETRAIN = ["student.name=tipsv2-nano", "student.image_size=32", "data.options={size: 32, length: 8}",
                 "train.batch_size=4", "train.max_steps=1", "train.log_every=1", "optim.warmup_steps=0",
                 "pretrain.num_prototypes=16", "pretrain.head_hidden=16", "pretrain.head_bottleneck=8",
                 "pretrain.local_crops=0"]


@pytest.fixture
def student_forwards(monkeypatch):
    """Every training-mode vision forward: (bool_masked_pos, last_hidden_state with its grad retained)."""
    calls = []
    original = Tipsv2VisionModel.forward

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training and torch.is_grad_enabled():
            out.last_hidden_state.retain_grad()
            calls.append((kwargs.get("bool_masked_pos"), out.last_hidden_state))
        return out

    monkeypatch.setattr(Tipsv2VisionModel, "forward", spy)
    return calls


def _distill(teacher, out, *overrides) -> None:
    assert main(["distill", "--recipe", "micro", f"teacher.spec={teacher}", *TINY_DISTILL, *overrides,
                 "--out", str(out)]) == 0


def _pretrain(tokenizer_dir, out, *overrides) -> None:
    assert main(["pretrain", "--recipe", "micro-teacher", f"student.tokenizer={tokenizer_dir}", *TINY_PRETRAIN,
                 *overrides, "--out", str(out)]) == 0


def _patch_grads(calls, registers: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mask, per-patch gradient norm) of every masked student forward."""
    return [(mask, hidden.grad[:, 1 + registers:].norm(dim=-1)) for mask, hidden in calls
            if mask is not None and mask.any()]


def test_the_distillation_mask_reaches_the_student(tiny_tipsv2_dir, tmp_path, student_forwards):
    _distill(tiny_tipsv2_dir, tmp_path / "masked", "train.max_steps=2", "loss.mask_ratio=0.5",
             "loss.mask_probability=1.0")
    masks = [mask for mask, _ in student_forwards]
    assert len(masks) == 2 and all(m is not None and m.shape == (4, 16) for m in masks)
    assert all((m.sum(1) == 8).all() for m in masks)  # half of the 4x4 grid hidden in every image
    student_forwards.clear()
    _distill(tiny_tipsv2_dir, tmp_path / "unmasked", "train.max_steps=1", "loss.mask_ratio=0")
    assert all(mask is None or not mask.any() for mask, _ in student_forwards)


@pytest.mark.parametrize("tokens", ["all", "masked"])
def test_distillation_patch_tokens_decide_which_tokens_get_a_gradient(tiny_tipsv2_dir, tmp_path, student_forwards,
                                                                      tokens):
    _distill(tiny_tipsv2_dir, tmp_path / tokens, "train.max_steps=1", "loss.mask_ratio=0.5",
             "loss.mask_probability=1.0", f"loss.patch_tokens={tokens}", "loss.cls_weight=0",
             "loss.register_weight=0", "loss.contrastive.kind=none")
    ((mask, grad),) = _patch_grads(student_forwards)
    assert (grad[mask] > 0).all()
    assert (grad[~mask] > 0).all() if tokens == "all" else (grad[~mask] == 0).all()


@pytest.mark.parametrize("tokens", ["all", "masked"])
def test_pretraining_patch_tokens_decide_which_tokens_get_a_gradient(tiny_tipsv2_dir, tmp_path, student_forwards,
                                                                     tokens):
    """iBOT++ (all) vs iBOT (masked): only the iBOT term on (contrastive and DINO weights 0)."""
    _pretrain(tiny_tipsv2_dir, tmp_path / tokens, "loss.mask_ratio=0.5", "loss.mask_probability=1.0",
              f"loss.patch_tokens={tokens}", "loss.contrastive.weight=0", "pretrain.alpha=0", "pretrain.beta=1")
    ((mask, grad),) = _patch_grads(student_forwards)
    assert (grad[mask] > 0).all()
    assert (grad[~mask] > 0).all() if tokens == "all" else (grad[~mask] == 0).all()


def test_saved_heads_are_the_trained_heads_composed_with_denormalisation(tiny_tipsv2_dir, tmp_path):
    from distill.losses.target_norm import TargetNorm
    from common.types import ImageTokens

    run = tmp_path / "run"
    _distill(tiny_tipsv2_dir, run, "train.max_steps=2", "loss.target_norm=phi-s", "loss.calibration_batches=1")
    (checkpoint,) = (run / "checkpoints").glob("step_*")
    trained = load_file(checkpoint / "model.safetensors")
    saved = load_file(run / "student" / "model.safetensors")
    norm = TargetNorm.load(run / "target_norm.safetensors")
    assert bool(norm.calibrated)
    x = torch.randn(3, 32)
    outputs = {}
    for which, state in (("trained", trained), ("saved", saved)):
        heads = {}
        for part in ("cls", "registers", "patches"):
            (weight,) = [v for k, v in state.items() if k.endswith(f"heads.{part}.weight")]
            (bias,) = [v for k, v in state.items() if k.endswith(f"heads.{part}.bias")]
            heads[part] = x @ weight.T + bias
        outputs[which] = ImageTokens(heads["cls"], heads["registers"][:, None], heads["patches"][:, None, None])
    expected = norm.denormalize(outputs["trained"])
    for part in ("cls", "registers", "patches"):
        torch.testing.assert_close(getattr(outputs["saved"], part), getattr(expected, part), rtol=1e-4, atol=1e-4)
    # The saved heads must differ from the trained ones, or the check above would prove nothing.
    assert not torch.allclose(outputs["saved"].patches, outputs["trained"].patches, atol=1e-2)


@pytest.mark.parametrize("ema", ["heads", "full"])
def test_full_ema_keeps_a_backbone_copy_and_head_only_ema_does_not(tiny_tipsv2_dir, tmp_path, monkeypatch, ema):
    from accelerate import Accelerator

    from students import build_student

    prepared = []
    original = Accelerator.prepare

    def spy(self, *args, **kwargs):
        prepared.extend(a for a in args if isinstance(a, torch.nn.Module))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "prepare", spy)
    _pretrain(tiny_tipsv2_dir, tmp_path / ema, f"pretrain.ema={ema}")
    (module,) = prepared
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    trainable = [p for p in module.parameters() if p.requires_grad]
    vision = sum(p.numel() for p in build_student("tipsv2-nano", text=False, image_size=32).vision.parameters())
    # Head-only EMA: the EMA copies are the two prototype heads; full EMA adds a copy of the vision tower.
    head_params = 2 * (32 * 16 + 16 + 16 * 16 + 16 + 16 * 8 + 8 + 16 * 8)
    assert frozen == head_params + (vision if ema == "full" else 0)
    assert sum(p.numel() for p in trainable) > vision  # backbone, text tower and heads train in both


TORCH_LOSSES = {"cosine": (F, "cosine_similarity"), "smooth_l1": (F, "smooth_l1_loss"), "mse": (F, "mse_loss"),
                "infonce": (torch, "log_softmax"), "sigmoid": (F, "logsigmoid")}


@pytest.fixture
def torch_losses(monkeypatch):
    """Which torch loss primitives ran, with the width of their first argument."""
    called: dict[str, list[int]] = {name: [] for name in TORCH_LOSSES}
    for name, (module, attr) in TORCH_LOSSES.items():
        original = getattr(module, attr)

        def spy(*args, _original=original, _name=name, **kwargs):
            called[_name].append(args[0].shape[-1])
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, attr, spy)
    return called


@pytest.mark.parametrize("distance, expected", [("cosine", {"cosine"}), ("smooth_l1", {"smooth_l1"}),
                                                ("mse", {"mse"}), ("mix", {"cosine", "smooth_l1"})])
def test_each_distance_reaches_its_loss(tiny_tipsv2_dir, tmp_path, torch_losses, distance, expected):
    _distill(tiny_tipsv2_dir, tmp_path / "run", "train.max_steps=1", f"loss.distance={distance}",
             "loss.contrastive.kind=none")
    ran = {name for name in ("cosine", "smooth_l1", "mse") if torch_losses[name]}
    assert ran == expected
    assert all(width == 32 for name in ran for width in torch_losses[name])  # teacher-width tokens


@pytest.mark.parametrize("kind", ["infonce", "sigmoid", "none"])
def test_each_contrastive_kind_reaches_its_loss(tiny_tipsv2_dir, tmp_path, torch_losses, kind):
    _distill(tiny_tipsv2_dir, tmp_path / "run", "train.max_steps=1", f"loss.contrastive.kind={kind}")
    assert bool(torch_losses["infonce"]) == (kind == "infonce")
    assert bool(torch_losses["sigmoid"]) == (kind == "sigmoid")
    if kind != "none":  # (images x all captions) logits of the 4-image batch, CLS1 and CLS2
        assert torch_losses[kind] == [4] * (4 if kind == "infonce" else 2)


def test_caption_ids_are_the_same_in_every_interpreter():
    """Multi-positive targets match captions across processes by id: no salted `hash()`."""
    code = ("from distill.losses.global_batch import caption_ids; "
            "print(caption_ids(['a red circle', 'a striped floor', '']).tolist())")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")}
    assert len(outputs) == 1 and outputs.pop().strip().startswith("[")


def test_caption_draws_are_keyed_by_sample_not_by_batch_row(tiny_tipsv2_dir):
    """A process holding images 11 and 13 of a global batch draws for them what one process holding the whole
    batch draws: the loader's draws depend on (seed, epoch, index), whatever the batch composition."""
    from distill.data import Draws, make_dataloader

    dataset = SubsetScenes()
    draws = Draws(caption_weights={"short": 0.2, "medium": 0.4, "long": 0.4})
    full = make_dataloader(dataset, batch_size=4, student_size=32, draws=draws, shuffle=False)
    half = make_dataloader(torch.utils.data.Subset(dataset, [1, 3]), batch_size=2, student_size=32, draws=draws,
                           shuffle=False)
    for epoch in range(3):
        full.set_epoch(epoch), half.set_epoch(epoch)
        (a,), (b,) = list(full), list(half)
        assert b.caption_pair.cls2 == [a.caption_pair.cls2[r] for r in (1, 3)]
        assert torch.equal(b.index, a.index[[1, 3]])
    epochs = set()
    for epoch in range(40):
        full.set_epoch(epoch)
        epochs.add(next(iter(full)).caption_pair.cls2[0])
    assert len(epochs) == 3  # every granularity of image 0 gets drawn across epochs


def test_captions_tokenised_in_the_workers_are_what_the_text_towers_read(tiny_tipsv2_dir):
    """The loader's workers tokenise each batch's caption pair as the tower that reads it would: the frozen
    teacher each list alone (its `encode_text`), the student both lists to one width (one forward)."""
    from distill.data import Draws, make_dataloader
    from distill.data.captions import CaptionTokenizer
    from teachers import load_teacher

    teacher = load_teacher(str(tiny_tipsv2_dir))
    draws = Draws(caption_weights={"short": 0.2, "medium": 0.4, "long": 0.4})
    for captions, workers in ((CaptionTokenizer(teacher.text_tokenizer), 2),
                              (CaptionTokenizer(teacher.text_tokenizer, joint=True), 0)):
        loader = make_dataloader(SubsetScenes(), batch_size=4, student_size=32, draws=draws, captions=captions,
                                 num_workers=workers)
        pair = next(iter(loader)).caption_pair
        if captions.joint:
            both = tokenize(teacher.tokenizer, pair.cls1 + pair.cls2, 64)
            got = {k: torch.cat([part[k] for part in pair.tokens]) for k in ("input_ids", "attention_mask")}
            assert all(torch.equal(got[k], both[k]) for k in got)
        else:
            for texts, tokens in zip((pair.cls1, pair.cls2), pair.tokens):
                assert torch.equal(teacher.encode_text_tokens(tokens), teacher.encode_text(texts))


class SubsetScenes(torch.utils.data.Dataset):
    """Four built-in scenes keeping their own index when sub-set (as a sharded process sees them)."""

    def __init__(self):
        from distill.data.scenes import SceneDataset

        self.scenes = SceneDataset("train", size=32, length=4)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.scenes[i]


def test_train_compile_compiles_the_student_and_teacher_towers(tiny_tipsv2_dir, tmp_path, monkeypatch):
    """`train.compile=true` compiles the towers in place (checkpoint names unchanged); dynamo's eager backend
    traces the real graphs in seconds where inductor would generate C++ for minutes."""
    compiled = []
    original = torch.nn.Module.compile

    def eager_compile(self, *args, **kwargs):
        compiled.append(type(self).__name__)
        return original(self, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", eager_compile)
    _distill(tiny_tipsv2_dir, tmp_path / "run", "train.max_steps=2", "train.compile=true")
    # the student's and the teacher's vision towers, and the teacher's text tower that text_tower=teacher reads
    assert compiled.count("Tipsv2VisionModel") == 2 and compiled.count("Tipsv2TextModel") == 1
    assert all("_orig_mod" not in k for k in load_file(tmp_path / "run" / "student" / "model.safetensors"))
