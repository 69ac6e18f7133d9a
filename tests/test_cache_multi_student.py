"""Two students on one teacher forward: the shared step equals the two separate steps."""
import pytest
import torch

from distill.config import ContrastiveConfig, LossConfig
from distill.multi_student import MultiStudentObjective
from distill.objective import DistillObjective, teacher_targets
from students import build_student
from teachers.errors import UserError
from test_cache_build import tiny_teacher


def objective(name, seed, width, loss, image_size=32):
    torch.manual_seed(seed)
    return DistillObjective(build_student(name, teacher_width=width, text=False, image_size=image_size), loss,
                            teacher_width=width)


class CountingTeacher:
    def __init__(self, teacher):
        self.teacher, self.calls = teacher, 0

    def encode_image(self, pixels):
        self.calls += 1
        return self.teacher.encode_image(pixels)


def test_one_teacher_forward_trains_both_students_as_separate_runs_would():
    teacher = tiny_teacher()
    loss = LossConfig(distance="cosine", contrastive=ContrastiveConfig(kind="none"))
    pair = MultiStudentObjective({"nano": objective("tipsv2-nano", 0, teacher.width, loss),
                                  "micro": objective("tipsv2-micro", 1, teacher.width, loss)})
    alone = {"nano": objective("tipsv2-nano", 0, teacher.width, loss),
             "micro": objective("tipsv2-micro", 1, teacher.width, loss)}
    pixels, mask = torch.rand(3, 3, 32, 32), torch.zeros(3, 16, dtype=torch.bool)
    counting = CountingTeacher(teacher)
    out = pair(pixels, mask, teacher_targets(counting, pixels))
    out.loss.backward()
    assert counting.calls == 1
    for name, single in alone.items():
        own = single(pixels, mask, teacher_targets(teacher, pixels))
        own.loss.backward()
        torch.testing.assert_close(out.parts[f"{name}/loss"], own.loss.detach())
        for (key, p), q in zip(pair.objectives[name].named_parameters(), single.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=key)
    torch.testing.assert_close(out.loss, sum(out.parts[f"{n}/loss"] for n in alone))
    assert set(pair.students_for_export()) == {"nano", "micro"}


def test_students_with_other_patch_sizes_are_refused():
    teacher = tiny_teacher()
    loss = LossConfig(contrastive=ContrastiveConfig(kind="none"))
    with pytest.raises(UserError, match="patch sizes"):
        MultiStudentObjective({"nano": objective("tipsv2-nano", 0, teacher.width, loss),
                               "s14": objective("tipsv2-s14", 0, teacher.width, loss, image_size=56)})
