"""Two students on one teacher forward: the shared step equals the two separate steps."""
import pytest
import torch

from distill.config import ContrastiveConfig, LossConfig
from distill.targets import OnlineTargets
from distill.tasks.distill_task import DistillTask
from distill.tasks.multi_student import MultiStudentTask
from students import build_student
from common.errors import UserError
from test_cache_build import tiny_teacher


def task(name, seed, width, loss, image_size=32):
    torch.manual_seed(seed)
    return DistillTask(build_student(name, teacher_width=width, text=False, image_size=image_size), loss,
                       teacher_width=width, contrastive=False)


class CountingTeacher(OnlineTargets):
    calls = 0

    def tokens(self, batch):
        self.calls += 1
        return super().tokens(batch)


def test_one_teacher_forward_trains_both_students_as_separate_runs_would():
    teacher = tiny_teacher()
    loss = LossConfig(distance="cosine", contrastive=ContrastiveConfig(kind="none"))
    pair = MultiStudentTask({"nano": task("tipsv2-nano", 0, teacher.width, loss),
                             "micro": task("tipsv2-micro", 1, teacher.width, loss)})
    alone = {"nano": task("tipsv2-nano", 0, teacher.width, loss), "micro": task("tipsv2-micro", 1, teacher.width, loss)}
    pixels = torch.rand(3, 3, 32, 32)
    batch = {"pixels": pixels, "teacher_pixels": pixels, "mask": torch.zeros(3, 16, dtype=torch.bool)}
    counting = CountingTeacher(teacher, "tiny")
    out = pair(batch, counting(batch))
    out.loss.backward()
    assert counting.calls == 1
    for name, single in alone.items():
        own = single(batch, OnlineTargets(teacher, "tiny")(batch))
        own.loss.backward()
        torch.testing.assert_close(out.parts[f"{name}/loss"], own.loss.detach())
        for (key, p), q in zip(pair.tasks[name].named_parameters(), single.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=key)
    torch.testing.assert_close(out.loss, sum(out.parts[f"{n}/loss"] for n in alone))
    assert set(pair.exports()) == {"nano", "micro"}


def test_students_with_other_patch_sizes_are_refused():
    teacher = tiny_teacher()
    loss = LossConfig(contrastive=ContrastiveConfig(kind="none"))
    with pytest.raises(UserError, match="patch sizes"):
        MultiStudentTask({"nano": task("tipsv2-nano", 0, teacher.width, loss),
                          "s14": task("tipsv2-s14", 0, teacher.width, loss, image_size=56)})
