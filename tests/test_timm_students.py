"""`timm:NAME` students: any timm image model as the vision tower (a micro ConvNeXt and a micro ViT here), pixel
masking, a distillation that resumes bitwise, exports (timm, onnx) read back by evaluation, and the bad inputs."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn

from distill.cli import main
from distill.recipe_loader import load_recipe
from distill.eval import evaluate
from distill.eval.models import TEACHER_SPACE
from distill.run import run_training
from students import build_student, load_student
from students.timm_student import TimmStudent, mask_pixels
from teachers import load_teacher
from common.errors import UserError

CONVNET = dict(name="timm:convnext_atto", timm_kwargs={"dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1]},
               feature_stride=8)
VIT = dict(name="timm:vit_small_patch16_224",
           timm_kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 8, "img_size": 32})
TINY_CONVNET = [
    f"student.name={CONVNET['name']}", "student.timm_kwargs={dims: [8, 16, 24, 32], depths: [1, 1, 1, 1]}",
    "student.feature_stride=8", "student.image_size=32", "data.options.size=32", "data.options.length=24",
    "log_every=1", "checkpoint_every=0", "optim.warmup_steps=2", "batch_size=8", "loss.mask_probability=1.0",
]


def _build(arch: dict, **options):
    torch.manual_seed(0)
    arch = dict(arch)
    return build_student(arch.pop("name"), text=False, image_size=32, **arch, **options)


@pytest.mark.parametrize("arch", [CONVNET, VIT], ids=["convnet", "vit"])
def test_a_timm_student_gives_tipsv2_tokens_and_masks_in_pixel_space(arch):
    student = _build(arch, teacher_width=48).eval()
    assert isinstance(student, TimmStudent) and student.patch_size == 8 and student.num_registers == 1
    pixels = torch.rand(2, 3, 32, 32)
    plain = student(pixels)
    assert plain.cls.shape == (2, student.width) and plain.registers.shape == (2, 1, student.width)
    assert plain.patches.shape == (2, 4, 4, student.width)
    assert not torch.equal(plain.cls, plain.registers[:, 0])  # two learned maps of the pooled vector
    projected = student.project(plain)
    assert projected.patches.shape == (2, 4, 4, 48) and projected.registers.shape == (2, 1, 48)

    unmasked = torch.zeros(2, 16, dtype=torch.bool)
    assert torch.equal(student(pixels, unmasked).patches, plain.patches)  # the engine passes all-False masks
    mask = unmasked.clone()
    mask[0, 5] = True  # cell (1, 1): rows 8-15, columns 8-15
    hidden = mask_pixels(pixels, mask, 8, student.mask_token)
    changed = (hidden != pixels).any(1)
    assert changed[0, 8:16, 8:16].all() and changed.sum() == 64
    assert torch.equal(hidden[0, :, 8:16, 8:16], student.mask_token.detach().view(3, 1, 1).expand(3, 8, 8))
    masked = student(pixels, mask)
    assert not torch.equal(masked.patches[0], plain.patches[0]) and torch.equal(masked.patches[1], plain.patches[1])
    masked.patches.sum().backward()
    assert student.mask_token.grad is not None and student.mask_token.grad.abs().sum() > 0


def test_a_timm_vit_takes_other_sizes_with_dynamic_img_size_and_exports_them_to_onnx(tmp_path):
    fixed = _build(VIT)
    with pytest.raises(UserError, match="takes 32x32 only; expected that size, or timm_kwargs dynamic_img_size"):
        fixed(torch.rand(1, 3, 48, 48))
    dynamic = _build({**VIT, "timm_kwargs": {**VIT["timm_kwargs"], "dynamic_img_size": True}}, teacher_width=48)
    assert fixed.fixed_size and not dynamic.fixed_size
    dynamic.save(tmp_path / "vit")
    # timm resamples the position embeddings with antialiased bicubic, which the export maps to ONNX's Resize.
    assert main(["export", str(tmp_path / "vit"), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    pixels = torch.rand(2, 3, 48, 24)
    got = load_teacher(f"onnx:{tmp_path / 'onnx'}").encode_image(pixels)
    assert (got.patches - load_student(tmp_path / "vit").encode_image(pixels).patches).abs().max() <= 1e-4


def test_a_batch_norm_convnet_exports_to_onnx_with_its_running_statistics(tmp_path):
    student = _build({"name": "timm:mobilenetv3_small_050", "feature_stride": 8}, teacher_width=48)
    student(torch.rand(4, 3, 32, 32))  # a training-mode forward moves the running statistics off their init
    student.save(tmp_path / "bn")
    assert main(["export", str(tmp_path / "bn"), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    pixels = torch.rand(2, 3, 32, 32)
    got = load_teacher(f"onnx:{tmp_path / 'onnx'}").encode_image(pixels)
    assert (got.patches - load_student(tmp_path / "bn").eval().encode_image(pixels).patches).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def run(tiny_tipsv2_dir, tmp_path_factory):
    """A tiny convnet distilled 4 steps, and the same run stopped at 2 and resumed."""
    root = tmp_path_factory.mktemp("timm_run")
    recipe = load_recipe("micro", [f"teacher.spec={tiny_tipsv2_dir}", *TINY_CONVNET, "max_steps=4"])
    straight = run_training(recipe, root / "straight")
    run_training(recipe, root / "split", stop_at=2)
    assert main(["distill", "--out", str(root / "split"), "--resume"]) == 0
    return straight, root / "split" / "student"


def test_a_convnet_student_distils_and_resumes_bitwise(run, tiny_tipsv2_dir):
    straight, resumed = run
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and "mask_token" in a and all(torch.equal(a[k], b[k]) for k in a)
    manifest = json.loads((straight / "student.json").read_text())
    assert manifest["timm"] == {"model": "convnext_atto", "kwargs": CONVNET["timm_kwargs"], "feature_stride": 8,
                                "image_size": 32}
    student = load_student(straight)
    assert isinstance(student, TimmStudent) and student.teacher_width == 32
    assert load_teacher(str(straight)).fingerprint == student.fingerprint
    other = _build(CONVNET)
    assert other.fingerprint != student.fingerprint  # the weights are in it
    wider = _build({**CONVNET, "timm_kwargs": {**CONVNET["timm_kwargs"], "dims": [8, 16, 24, 40]}})
    assert wider.fingerprint != other.fingerprint  # and the keywords


def test_exports_read_back_and_evaluate_in_the_teacher_space(run, tmp_path, capsys):
    student_dir = run[0]
    student = load_student(student_dir).eval()
    pixels = torch.rand(2, 3, 32, 48)
    want = student.encode_image(pixels)
    assert main(["export", str(student_dir), "--format", "timm", "--out", str(tmp_path / "timm")]) == 0
    assert torch.equal(load_teacher(str(tmp_path / "timm")).encode_image(pixels).patches, want.patches)
    config = json.loads((tmp_path / "timm" / "timm_config.json").read_text())
    model = timm.create_model(config["model_name"], pretrained=False, checkpoint_path=str(tmp_path / "timm" /
                              "model.safetensors"), pretrained_cfg_overlay=config["pretrained_cfg"], **config["kwargs"])
    data = timm.data.resolve_data_config(model=model.eval())
    assert tuple(data["input_size"]) == (3, 32, 32)
    normalised = (pixels - torch.tensor(data["mean"]).view(3, 1, 1)) / torch.tensor(data["std"]).view(3, 1, 1)
    with torch.no_grad():  # plain timm gives the student's patch tokens
        _, (dense,) = model.forward_intermediates(normalised, indices=[student.vision.level], norm=True)
    assert torch.allclose(dense.permute(0, 2, 3, 1), want.patches, atol=1e-6)
    assert main(["export", str(student_dir), "--format", "onnx", "--with-heads", "--out", str(tmp_path / "onnx")]) == 0
    got = load_teacher(f"onnx:{tmp_path / 'onnx'}").encode_image(pixels)
    assert (got.patches - want.patches).abs().max() <= 1e-4 and (got.cls - want.cls).abs().max() <= 1e-4
    for fmt in ("hf", "npz"):
        capsys.readouterr()
        assert main(["export", str(student_dir), "--format", fmt, "--out", str(tmp_path / fmt)]) == 2
        assert "expected --format timm or onnx" in capsys.readouterr().err and not (tmp_path / fmt).exists()
    report = evaluate({"student": f"{student_dir}{TEACHER_SPACE}"}, "zeroshot-seg", "scenes:size=32,length=4",
                      tmp_path / "seg", quiet=True, overlays=0)
    assert report["models"]["student"]["miou"] is not None
    assert report["cost"]["student"]["vision_params"] == sum(p.numel() for p in student.vision.parameters()) + sum(
        p.numel() for p in student.heads.parameters())


class _Flat(nn.Module):
    """A timm-registered model with a pooled output only (no feature_info, no forward_intermediates)."""

    def __init__(self, **kwargs):
        super().__init__()
        self.fc = nn.Linear(3, 4)


def tipsdistill_test_flat(pretrained=False, **kwargs):
    return _Flat(**kwargs)


@pytest.fixture(scope="module")
def flat_model():
    from timm.models import register_model

    if not timm.is_model(tipsdistill_test_flat.__name__):
        register_model(tipsdistill_test_flat)
    return tipsdistill_test_flat.__name__


@pytest.mark.parametrize("overrides, words", [
    (["student.name=timm:convnext_atoo"], "unknown timm model 'convnext_atoo'; expected a name from "
                                          "timm.list_models(); close names: convnext_atto"),
    (["student.name=timm:convnext_atto", "student.feature_stride=12"], "not a feature stride of convnext_atto"),
    (["student.name=timm:convnext_atto", "student.image_size=60", "data.options.size=60"],
     "is 60; expected a multiple of timm:convnext_atto's patch size 32"),
    (["student.name=timm:vit_small_patch16_224"], "timm:vit_small_patch16_224 cannot take 64 px images"),
    (["student.name=timm:convnext_atto", "student.timm_kwargs={widths: 3}"], "timm could not build convnext_atto"),
    (["student.name=timm:convnext_atto", "loss.contrastive.text_tower=student"], "is a timm model with no text tower"),
    (["student.timm_kwargs={dims: [8]}"], "none for a zoo student"),
])
def test_bad_timm_students_are_refused_before_anything_is_written(overrides, words, tmp_path, capsys):
    code = main(["distill", "--recipe", "micro", "--out", str(tmp_path / "run"), "train.max_steps=1", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_timm_model_without_spatial_features_is_refused(flat_model):
    with pytest.raises(UserError, match="has no spatial features"):
        build_student(f"timm:{flat_model}", text=False, image_size=32)


def test_a_timm_student_trains_beside_a_zoo_student_on_one_mask_grid():
    from distill.config import ContrastiveConfig, LossConfig
    from distill.data import DataStats
    from distill.data.batch import Batch
    from distill.targets import OnlineTargets
    from distill.tasks.student_setup import teacher_term
    from distill.tasks.distill_task import DistillTask
    from distill.tasks.multi_student import MultiStudentTask
    from test_cache_build import tiny_teacher

    teacher = tiny_teacher()
    loss = LossConfig(distance="cosine", mask_ratio=0.3, contrastive=ContrastiveConfig(kind="none"))
    students = {"nano": build_student("tipsv2-nano", teacher_width=teacher.width, text=False, image_size=32),
                "convnet": _build(CONVNET, teacher_width=teacher.width)}
    pair = MultiStudentTask({name: DistillTask(s, loss, teachers=[teacher_term(loss, teacher.width)], contrastive=False)
                             for name, s in students.items()})
    pixels, mask = torch.rand(2, 3, 32, 32), torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :4] = True
    batch = Batch(pixels, pixels, torch.arange(2), torch.zeros(2, 5), {}, DataStats(), mask=mask)
    out = pair(batch, OnlineTargets(teacher, "tiny")(batch))
    out.loss.backward()
    assert {"nano/loss", "convnet/loss"} <= set(out.parts) and students["convnet"].mask_token.grad.abs().sum() > 0


def test_init_reads_a_local_timm_weights_file_and_refuses_one_of_another_shape(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = timm.create_model("convnext_atto", **CONVNET["timm_kwargs"])  # with its classifier, as released
    save_file(source.state_dict(), tmp_path / "weights.safetensors")
    student = _build(CONVNET, init=str(tmp_path / "weights.safetensors"))
    mine = student.vision.model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in source.state_dict().items() if not k.startswith("head.fc"))
    assert student.metadata["init"]["spec"] == str(tmp_path / "weights.safetensors")
    wider = {**CONVNET, "timm_kwargs": {**CONVNET["timm_kwargs"], "dims": [8, 16, 24, 40]}}
    with pytest.raises(UserError, match=r"^timm could not build convnext_atto .* from .*weights.safetensors \("):
        _build(wider, init=str(tmp_path / "weights.safetensors"))
    with pytest.raises(UserError, match="no such weights file"):
        _build(CONVNET, init=str(tmp_path / "missing.safetensors"))
