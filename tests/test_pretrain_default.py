"""The packaged micro teacher and the default job's recipe (the run itself is the lead's CI smoke job)."""
from __future__ import annotations

import torch

from distill.recipe_loader import load_recipe
from distill.default_job import DEFAULT_OVERRIDES, package_teacher
from teachers.load import PACKAGED

TEACHER_DIR = PACKAGED["micro"]


def test_packaged_teacher_is_small_and_loads_as_a_tipsv2_teacher():
    from teachers import load_teacher

    size = sum(p.stat().st_size for p in TEACHER_DIR.iterdir())
    assert size < 5 * 2**20
    teacher = load_teacher(str(TEACHER_DIR))
    assert teacher.has_text and teacher.patch_size == 8 and teacher.image_size == 64
    tokens = teacher.encode_image(torch.rand(2, 3, 64, 64), value_trick=True)
    assert tokens.patches.shape == (2, 8, 8, teacher.width) and tokens.patches.dtype == torch.float32
    text = teacher.encode_text(["a red circle on a sand floor", "a photo of a snow."])
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-4)


def test_default_recipe_points_at_the_packaged_teacher():
    from teachers import load_teacher

    recipe = load_recipe("micro", list(DEFAULT_OVERRIDES))
    assert recipe.teacher.spec == "micro" and recipe.student.name == "tipsv2-pico" and recipe.data.source == "scenes"
    assert recipe.loss.contrastive.text_tower == "teacher" and recipe.data.crop.flip_p == 0.0
    assert load_teacher("micro").fingerprint == load_teacher(str(TEACHER_DIR)).fingerprint


def test_the_default_job_compresses_its_teacher():
    """The promise is a smaller student: >= 4x fewer vision parameters (heads included) and >= 2x fewer FLOPs."""
    from distill.eval.cost import gflops_per_image
    from students import build_student
    from teachers import load_teacher

    teacher = load_teacher("micro")
    student = build_student(load_recipe("micro").student.name, teacher_width=teacher.width, text=False).eval()
    teacher_params = sum(p.numel() for p in teacher.vision.parameters())
    student_params = sum(p.numel() for p in [*student.vision.parameters(), *student.heads.parameters()])
    assert teacher_params >= 4 * student_params
    cpu = torch.device("cpu")
    assert gflops_per_image(teacher, 64, cpu) >= 2 * gflops_per_image(student.teacher_space(), 64, cpu)


def test_packaging_round_trip_keeps_the_weights(tmp_path):
    from transformers import Tipsv2Model

    copy = package_teacher(TEACHER_DIR, tmp_path / "micro_teacher")
    a, b = Tipsv2Model.from_pretrained(TEACHER_DIR), Tipsv2Model.from_pretrained(copy)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
