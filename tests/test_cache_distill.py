"""`distill cache=DIR`: the cached run's losses equal the online run's within bf16; a stale cache is refused."""
import json

import pytest

from distill.cli import main
from test_engine_train import overriding

STEPS = 4


def recipe_args(teacher_dir, *extra):
    return ["--recipe", "micro", *overriding([
        f"teacher.spec={teacher_dir}", "student.name=tipsv2-nano", "student.image_size=32",
        "data.options={size: 48, length: 8}", f"max_steps={STEPS}", "batch_size=4", "log_every=1",
        "checkpoint_every=0", "warmup_steps=0", "loss.contrastive.kind=none"], *extra)]


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, tiny_tipsv2_dir):
    out = tmp_path_factory.mktemp("cache") / "c"
    assert main(["cache", *recipe_args(tiny_tipsv2_dir), "--out", str(out), "--augmentations", "2"]) == 0
    return out


def test_cached_run_matches_the_online_run(tmp_path, tiny_tipsv2_dir, cache_dir):
    assert main(["distill", *recipe_args(tiny_tipsv2_dir), "--out", str(tmp_path / "online")]) == 0
    assert main(["distill", *recipe_args(tiny_tipsv2_dir, f"cache={cache_dir}"), "--out", str(tmp_path / "cached")]) == 0
    online, cached = losses(tmp_path / "online"), losses(tmp_path / "cached")
    assert len(online) == len(cached) == STEPS  # 2 epochs of 2 steps: both within K=2 stored crops
    for a, b in zip(online, cached):
        assert abs(a - b) <= 2 ** -8 * abs(a) + 1e-4


@pytest.mark.parametrize("override, words", [("data.crop.flip_p=0.5", "flip_p"),
                                             ("student.image_size=40", "teacher_image_size=40"),
                                             ("data.options={size: 48, length: 9}", "data_options")])
def test_distill_refuses_a_stale_cache(tmp_path, tiny_tipsv2_dir, cache_dir, capsys, override, words):
    args = recipe_args(tiny_tipsv2_dir, f"cache={cache_dir}", override)
    assert main(["distill", *args, "--out", str(tmp_path / "run")]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: cache ") and words in last


def test_a_cached_run_never_loads_the_teacher(tmp_path, tiny_tipsv2_dir, cache_dir, monkeypatch):
    """Width, registers, fingerprint and tokenizer come from the cache: the teacher spec may point nowhere."""
    import teachers.load

    def refuse(*args, **kwargs):
        raise AssertionError("a cached run loaded the teacher")

    monkeypatch.setattr(teachers.load, "_build", refuse)  # every spec goes through it
    args = recipe_args(tiny_tipsv2_dir, f"cache={cache_dir}", "teacher.spec=/nowhere/teacher",
                       "loss.contrastive.kind=infonce", "loss.contrastive.text_tower=student",
                       "loss.target_norm=phi-s", "loss.calibration_batches=1")
    assert main(["distill", *args, "--out", str(tmp_path / "run")]) == 0
    from students import load_student

    student = load_student(tmp_path / "run" / "student")
    assert student.tokenizer is not None  # the cache's copy of the teacher's tokenizer
    assert student.metadata["teacher"]["fingerprint"] == json.loads((cache_dir / "manifest.json").read_text())[
        "teacher_fingerprint"]


def test_two_students_from_one_teacher_forward(tmp_path, tiny_tipsv2_dir, cache_dir):
    students = "students=[{name: tipsv2-nano, image_size: 32}, {name: tipsv2-micro, image_size: 32}]"
    assert main(["distill", *recipe_args(tiny_tipsv2_dir, students, f"cache={cache_dir}"),
                 "--out", str(tmp_path / "pair")]) == 0
    from students import load_student

    assert load_student(tmp_path / "pair" / "student" / "tipsv2-nano").width == 32
    assert load_student(tmp_path / "pair" / "student" / "tipsv2-micro").width == 96
    rows = [json.loads(line) for line in (tmp_path / "pair" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == STEPS
    for row in rows:
        assert abs(row["loss"] - row["tipsv2-nano/loss"] - row["tipsv2-micro/loss"]) < 1e-5
