"""Cache building: shard layout, stored crops, resuming a killed build to the same bytes, refusals."""
from pathlib import Path

import pytest
import torch
from transformers import Tipsv2VisionConfig, Tipsv2VisionModel

from distill.cache.manifest import MANIFEST, Preprocessing, check_cache_matches, read_manifest
from distill.cache.reader import CacheReader
from distill.cache.writer import CacheSettings, build_cache, teacher_augment
from distill.data.augment import CropConfig, apply_crop
from distill.data.scenes import SceneDataset
from common.errors import UserError
from common.lock import OutputLock
from common.types import TOKEN_PARTS
from teachers.tipsv2_teacher import Tipsv2Teacher


def tiny_teacher(seed: int = 0) -> Tipsv2Teacher:
    torch.manual_seed(seed)
    vision = Tipsv2VisionModel(Tipsv2VisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                  patch_size=8, image_size=32))
    with torch.no_grad():
        for p in vision.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return Tipsv2Teacher(vision).freeze()


def preprocessing(data, **changes) -> Preprocessing:
    base = dict(dataset="scenes:test", data_options={"length": len(data)}, dataset_length=len(data), teacher_image_size=32,
                crop=CropConfig((0.4, 1.0), (0.75, 4 / 3), 0.5), seed=3)
    return Preprocessing(**{**base, **changes})


@pytest.fixture(scope="module")
def teacher():
    return tiny_teacher()


@pytest.fixture(scope="module")
def other_teacher():
    return tiny_teacher(seed=1)


@pytest.fixture(scope="module")
def dataset():
    return SceneDataset(length=5, size=48)


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.safetensors"))}


class Killed(Exception):
    pass


@pytest.mark.parametrize("compress", ["none", "int8", "pca:8"])
def test_killed_build_resumes_to_the_same_shards(tmp_path, teacher, dataset, compress):
    pre = preprocessing(dataset)
    settings = CacheSettings(augmentations=2, dtype="bf16", compression=compress, shard_size=2, batch_size=3)
    reference = build_cache(teacher, dataset, tmp_path / "whole", pre, settings)
    assert reference.complete and len(reference.shards) == 3

    def kill_after_two(done, total, images):
        if done == 2:
            raise Killed

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        build_cache(teacher, dataset, out, pre, settings, on_shard=kill_after_two)
    assert len(read_manifest(out).shards) == 2 and not read_manifest(out).complete
    # What SIGKILL mid-write leaves: the writer's temp dir, safetensors' own temp inside it.
    (out / ".tipsdistill-tmp-shard-00002.safetensors.0123abcd").mkdir()
    (out / ".tipsdistill-tmp-shard-00002.safetensors.0123abcd" / ".tmpAb12Cd").write_bytes(b"torn")
    with pytest.raises(UserError, match="incomplete"):
        check_cache_matches(out, read_manifest(out), pre)
    done = []
    with OutputLock(out):  # as the command does: taking it removes the temps
        resumed = build_cache(teacher, dataset, out, pre, settings, on_shard=lambda d, t, n: done.append(d))
    assert done == [3]  # only the missing shard was computed
    assert resumed.complete and resumed.shards == reference.shards
    assert shard_bytes(out) == shard_bytes(tmp_path / "whole")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "whole").iterdir())


def test_rows_hold_the_teacher_tokens_of_the_stored_crop(tmp_path, teacher, dataset):
    pre = preprocessing(dataset)
    build_cache(teacher, dataset, tmp_path, pre, CacheSettings(augmentations=3, dtype="fp16", shard_size=2))
    reader = CacheReader(tmp_path)
    for index, k in [(0, 0), (2, 1), (4, 2)]:
        image = dataset[index].image
        params = reader.crop(index, k)
        assert params.as_tensor().tolist() == teacher_augment(pre)(dataset[index], k)["crop"].tolist()
        want = teacher.encode_image(apply_crop(image, params, 32)[None])
        got = reader.targets(index, k)
        assert got.patches.shape == (4, 4, 32) and got.registers.shape == (1, 32)
        for name in TOKEN_PARTS:
            torch.testing.assert_close(getattr(got, name), getattr(want, name)[0], rtol=2 ** -10, atol=1e-3)
    assert len({reader.crop(1, k) for k in range(3)}) == 3  # K different crops per image


def test_resuming_with_other_settings_is_refused(tmp_path, teacher, other_teacher, dataset):
    pre = preprocessing(dataset)
    build_cache(teacher, dataset, tmp_path, pre, CacheSettings(augmentations=1, shard_size=4))
    before = (tmp_path / MANIFEST).read_text()
    with pytest.raises(UserError, match="augmentations"):
        build_cache(teacher, dataset, tmp_path, pre, CacheSettings(augmentations=2, shard_size=4))
    with pytest.raises(UserError, match="teacher_fingerprint"):
        build_cache(other_teacher, dataset, tmp_path, pre, CacheSettings(augmentations=1, shard_size=4))
    assert (tmp_path / MANIFEST).read_text() == before


def test_stale_cache_is_refused_in_one_line(tmp_path, teacher, dataset):
    pre = preprocessing(dataset)
    build_cache(teacher, dataset, tmp_path, pre, CacheSettings(augmentations=1, shard_size=8), teacher_spec="tiny")
    manifest = read_manifest(tmp_path)
    assert manifest.teacher_spec == "tiny" and manifest.patch_size == 8
    check_cache_matches(tmp_path, manifest, preprocessing(dataset, seed=9))  # the seed is free
    check_cache_matches(tmp_path, manifest, preprocessing(dataset, teacher_image_size=None))  # the cache decides
    cases = [(preprocessing(dataset, crop=CropConfig((0.2, 1.0))), "crop"),
             (preprocessing(dataset, teacher_image_size=48), "teacher_image_size"),
             (preprocessing(dataset, dataset="scenes:other"), "dataset"),
             (preprocessing(dataset, data_options={"length": 9}), "data_options")]
    for pre_now, words in cases:
        with pytest.raises(UserError, match=words) as err:
            check_cache_matches(tmp_path, manifest, pre_now)
        assert "\n" not in str(err.value)
