"""A cache of several teachers (`teachers:`): built one teacher at a time, resumed per shard, replayed to the
online run's very steps, and refused in one line for another teacher set."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.cache.manifest import TEACHERS, read_manifest
from distill.cache.teacher_set import build_teacher_set
from distill.cache.writer import CacheSettings
from distill.cli import main
from distill.config import TeacherConfig
from distill.data.scenes import SceneDataset
from distill.targets import OnlineTargets
from common.errors import UserError
from test_cache_build import Killed, preprocessing, tiny_teacher
from test_cache_scaleout import tree
from test_engine_train import overriding

STEPS = 4
SECOND = 24  # the second teacher's own input size: the 32 px view, resized


def teachers(*entries: str) -> str:
    return "teachers=[" + ", ".join("{" + entry + "}" for entry in entries) + "]"


def second(spec, name: str = "second", size: int = SECOND) -> str:
    return f"name: {name}, spec: {spec}, image_size: {size}, tokens: [cls, patches], target_norm: phi-s"


TIPS = "name: tips, spec: micro"


def recipe_args(second_dir, *extra):
    """The packaged micro teacher and a tiny one at its own size, with its own target statistics (calibrated)."""
    return ["--recipe", "micro", *overriding([
        teachers(TIPS, second(second_dir)), "student.image_size=32", "data.options={size: 48, length: 8}",
        f"max_steps={STEPS}", "batch_size=4", "log_every=1", "checkpoint_every=0", "warmup_steps=0",
        "loss.contrastive.kind=none", "loss.calibration_batches=1"], *extra)]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, tiny_tipsv2_dir):
    out = tmp_path_factory.mktemp("teachers") / "cache"
    assert main(["cache", *recipe_args(tiny_tipsv2_dir), "--out", str(out), "--augmentations", "2",
                 "--shard-size", "4"]) == 0
    return out


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_cache_holds_each_teacher_at_its_own_size(cache_dir):
    assert [e["name"] for e in json.loads((cache_dir / TEACHERS).read_text())["teachers"]] == ["tips", "second"]
    tips, other = read_manifest(cache_dir / "tips"), read_manifest(cache_dir / "second")
    assert tips.grid == (4, 4) and other.grid == (3, 3) and tips.complete and other.complete
    assert other.preprocessing.teacher_input_size == SECOND and other.patch_size == 8
    assert tips.preprocessing.crop == other.preprocessing.crop and tips.preprocessing.seed == other.preprocessing.seed


def test_a_cached_two_teacher_run_equals_the_online_run_bitwise(tmp_path, tiny_tipsv2_dir, cache_dir, monkeypatch):
    """Online targets rounded to the cache's bf16: then every metric and every weight is the cached run's, bit for
    bit (the same crops, each teacher's resize, its calibration, its loss terms)."""
    online_tokens = OnlineTargets.tokens
    monkeypatch.setattr(OnlineTargets, "tokens", lambda self, batch: online_tokens(self, batch).map(
        lambda t: t.to(torch.bfloat16).float()))
    assert main(["distill", *recipe_args(tiny_tipsv2_dir), "--out", str(tmp_path / "online")]) == 0
    monkeypatch.undo()
    cached_args = recipe_args(tiny_tipsv2_dir, f"cache={cache_dir}")
    assert main(["distill", *cached_args, "--out", str(tmp_path / "cached")]) == 0
    online, cached = metrics(tmp_path / "online"), metrics(tmp_path / "cached")
    assert len(online) == STEPS and "distill/second/cls" in online[0] and online == cached
    a, b = (load_file(tmp_path / run / "student" / "model.safetensors") for run in ("online", "cached"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((tmp_path / "cached" / "student" / "student.json").read_text())["metadata"]["teacher"]
    assert [t["name"] for t in card["teachers"]] == ["tips", "second"]


@pytest.mark.parametrize("change, words", [
    (teachers(TIPS, second("$DIR", name="third")), "holds the targets of other teachers"),
    (teachers(TIPS, second("micro")), "holds the targets of other teachers"),
    (teachers(TIPS, second("$DIR", size=16)), "teacher_input_size=16"),
    ("teachers=[]", "holds the targets of several teachers"),
    ("cache=$CACHE/tips", "holds one teacher's targets"),
])
def test_a_run_refuses_a_cache_of_another_teacher_set(tmp_path, tiny_tipsv2_dir, cache_dir, capsys, change, words):
    change = change.replace("$DIR", str(tiny_tipsv2_dir)).replace("$CACHE", str(cache_dir))
    args = recipe_args(tiny_tipsv2_dir, *overriding([f"cache={cache_dir}", "teacher.spec=micro"], change))
    assert main(["distill", *args, "--out", str(tmp_path / "run")]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: cache ") and words in last
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("args, words", [
    (["--recipe", "micro", teachers(TIPS, second("micro"))], "holds the cache of other teachers"),
    (["--teacher", "micro", "--data", "scenes", "--data-option", "length=8"], "holds the cache of several teachers"),
    (["--recipe", "micro", teachers(TIPS, second("micro")), "--teacher", "micro"], "--teacher with a recipe"),
])
def test_a_build_refuses_another_teacher_set_and_keeps_the_cache(cache_dir, capsys, args, words):
    before = tree(cache_dir)
    assert main(["cache", *args, "--out", str(cache_dir), "--augmentations", "2", "--shard-size", "4"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert words in last
    assert tree(cache_dir) == before


def test_a_killed_teacher_set_build_resumes_to_the_same_bytes(tmp_path):
    dataset = SceneDataset(length=5, size=48)
    pre, settings = preprocessing(dataset), CacheSettings(augmentations=2, shard_size=2, batch_size=3)
    set_of_two = [TeacherConfig(name="a", spec="a"), TeacherConfig(name="b", spec="b", image_size=SECOND)]
    loaded = {"a": tiny_teacher(0), "b": tiny_teacher(1)}
    build_teacher_set(set_of_two, loaded.__getitem__, dataset, tmp_path / "whole", pre, settings)

    shards_written = []

    def kill_in_the_second_teacher(done, total, images):
        shards_written.append(done)
        if len(shards_written) == 4:  # a's 3 shards, then b's first
            raise Killed

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        build_teacher_set(set_of_two, loaded.__getitem__, dataset, out, pre, settings,
                          on_shard=kill_in_the_second_teacher)
    assert read_manifest(out / "a").complete and len(read_manifest(out / "b").shards) == 1
    resumed = []
    build_teacher_set(set_of_two, loaded.__getitem__, dataset, out, pre, settings,
                      on_shard=lambda done, total, images: resumed.append(done))
    assert resumed == [2, 3]  # b's two missing shards, nothing of a
    assert tree(out) == tree(tmp_path / "whole")

    before = tree(out)
    with pytest.raises(UserError, match=r"b holds a cache built with other settings \(teacher_fingerprint"):
        build_teacher_set(set_of_two, {**loaded, "b": tiny_teacher(2)}.__getitem__, dataset, out, pre, settings)
    renamed = [set_of_two[0], TeacherConfig(name="c", spec="b", image_size=SECOND)]
    with pytest.raises(UserError, match="holds the cache of other teachers"):
        build_teacher_set(renamed, loaded.__getitem__, dataset, out, pre, settings)
    with pytest.raises(UserError, match="holds one teacher's cache"):
        build_teacher_set(set_of_two, loaded.__getitem__, dataset, out / "a", pre, settings)
    assert tree(out) == before
