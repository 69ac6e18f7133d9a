"""Two students on one teacher forward: the shared step equals the two separate steps."""
import pytest
import torch

from distill.config import ContrastiveConfig, LossConfig
from distill.data import DataStats
from distill.data.batch import Batch
from distill.recipe_loader import load_recipe
from distill.targets import OnlineTargets
from distill.tasks.distill_task import DistillTask
from distill.tasks.multi_student import MultiStudentTask
from distill.tasks.student_setup import teacher_term
from students import build_student
from common.errors import UserError
from test_cache_build import tiny_teacher


def task(name, seed, width, loss, image_size=32):
    torch.manual_seed(seed)
    return DistillTask(build_student(name, teacher_width=width, text=False, image_size=image_size), loss,
                       teachers=[teacher_term(loss, width)], contrastive=False)


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
    batch = Batch(pixels, pixels, torch.arange(3), torch.zeros(3, 5), {}, DataStats(),
                  mask=torch.zeros(3, 16, dtype=torch.bool))
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


S14_B14 = "students=[{name: tipsv2-s14, image_size: 56}, {name: tipsv2-b14, image_size: 56}]"


@pytest.mark.parametrize("students, extra, words", [
    ("[{name: tipsv2-nano, image_size: 56}, {name: tipsv2-s14, image_size: 56}]", [],
     r"'students\[1\]\.name'.*patch size 8"),
    ("[{name: tipsv2-s14, image_size: 56}, {name: tipsv2-b14, image_size: 112}]", [], r"'students\[1\]\.image_size'"),
    ("[{name: tipsv2-nano, image_size: 32}, {name: tipsv2-nano, image_size: 32}]", [], "not listed before it"),
    ("[{name: tipsv2-nano, image_size: 32}, {name: tipsv2-micro, image_size: 32, tokenizer: /tok}]", [],
     r"'students\[1\]\.tokenizer'"),
    ("[{name: tipsv2-nano, image_size: 32}, {name: tipsv2-micro, image_size: 32}]", ["loss.target_norm=channel"],
     "'loss.target_norm'"),
])
def test_students_that_cannot_share_a_crop_a_mask_or_captions_are_refused_on_load(students, extra, words):
    with pytest.raises(UserError, match=words):
        load_recipe("micro", [f"students={students}", *extra])


def test_students_decide_the_mask_grid_and_the_view_size_not_the_unused_student_entry(tmp_path):
    """micro's `student:` is tipsv2-pico (patch 8, 64 px); two 14-px students at 56 px draw their masks on
    their own 4 x 4 grid (an 8-px grid would give 7 x 7 and the wrong mask for both students)."""
    from distill.run import build_run

    recipe = load_recipe("micro", [S14_B14, "batch_size=2", "max_steps=1", "loss.mask_probability=1"])
    assert recipe.view_sizes(0) == (56, 56)
    run = build_run(recipe, tmp_path / "run", calibrate=False)
    run.loader.set_epoch(0)
    batch = next(iter(run.loader))
    assert batch.pixels.shape[-1] == 56 and batch.mask.shape == (2, 16) and batch.mask.any()
    assert [s.patch_size for s in run.unwrapped.students()] == [14, 14]
