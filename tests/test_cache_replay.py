"""Replay: a cached run sees the online run's crops and its loss equals the online loss up to storage precision."""
import numpy as np
import pytest
import torch
from PIL import Image

from distill.cache.manifest import Preprocessing
from distill.cache.replay import open_cache, replay_dataloader
from distill.cache.writer import CacheSettings, build_cache
from distill.data import CropConfig, build_dataset, make_dataloader
from distill.data.loader import Augment
from distill.data.scenes import SceneDataset
from distill.losses.patch_distill_loss import PatchDistillWeights, patch_distill_loss
from students import build_student
from distill.targets import CachedTargets
from common.errors import UserError
from test_cache_build import tiny_teacher

SEED = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    teacher, dataset = tiny_teacher(), SceneDataset(length=8, size=48)
    pre = Preprocessing(dataset="scenes:test", data_options={}, dataset_length=8, teacher_image_size=32,
                        crop=CropConfig((0.4, 1.0), (3 / 4, 4 / 3), 0.5), seed=SEED)
    out = tmp_path_factory.mktemp("cache")
    build_cache(teacher, dataset, out, pre, CacheSettings(augmentations=2, dtype="bf16", shard_size=3))
    return teacher, dataset, pre, out


def test_cached_loss_equals_online_loss_within_bf16(setup):
    teacher, dataset, pre, out = setup
    reader = open_cache(out, pre)
    online = make_dataloader(dataset, batch_size=4, student_size=32, teacher_size=32, seed=SEED)
    cached = replay_dataloader(dataset, {"teacher": reader}, Augment(32, 32, SEED), batch_size=4, seed=SEED)
    torch.manual_seed(0)
    student = build_student("tipsv2-nano", teacher_width=teacher.width, text=False)
    weights, seen = PatchDistillWeights(), {}
    for epoch in (0, 1, 2):
        online.set_epoch(epoch)
        cached.set_epoch(epoch)
        for a, b in zip(online, cached, strict=True):
            a, b = a.to("cpu"), b.to("cpu")  # float pixels, as the loop's send_to_device makes them
            assert torch.equal(a.index, b.index)
            if epoch < 2:  # epochs below K: the online run's very crops
                assert torch.equal(a.pixels, b.pixels) and torch.equal(a.crop, b.crop)
            pred = student.project(student.image_tokens(b.pixels))
            for i, index in enumerate(b.index.tolist()):
                seen.setdefault((index, epoch % 2), b.pixels[i])
                assert torch.equal(seen[(index, epoch % 2)], b.pixels[i])  # epoch 2 replays crop 0
            if epoch == 2:
                continue
            want, got = teacher.encode_image(a.teacher_pixels), CachedTargets(out)(b).tokens
            loss_online, _ = patch_distill_loss(pred, want, None, "cosine", weights)
            loss_cached, _ = patch_distill_loss(pred, got, None, "cosine", weights)
            rounded = want.map(lambda t: t.to(torch.bfloat16).float())
            loss_rounded, _ = patch_distill_loss(pred, rounded, None, "cosine", weights)
            torch.testing.assert_close(loss_cached, loss_rounded, rtol=0, atol=1e-5)
            assert abs(loss_cached.item() - loss_online.item()) <= 2 ** -8 * abs(loss_online.item()) + 1e-5
            loss_cached.backward()  # cached targets are ordinary tensors: autograd accepts them


def test_replay_refuses_a_stale_cache(setup, tmp_path):
    teacher, dataset, pre, out = setup
    other = Preprocessing(**{**pre.__dict__, "crop": CropConfig(flip_p=0.0)})
    with pytest.raises(UserError, match="flip_p"):
        open_cache(out, other)
    with pytest.raises(UserError, match="no manifest.json"):
        open_cache(tmp_path, pre)


def test_a_jpeg_folder_replays_the_online_views_bit_for_bit(tmp_path):
    """JPEGs decode to arrays (`plain_jpeg`) or, rotated, through Pillow, in the cache build, its replay and the
    online loader alike: a cached run's student views are the online run's, and its targets are the teacher's on
    the online run's teacher views, up to the bf16 storage."""
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6
    for i in range(6):
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        coarse.resize((48 + 8 * i, 40), Image.Resampling.BICUBIC).save(
            tmp_path / f"{i}.jpg", exif=exif.tobytes() if i == 2 else b"")
    dataset, teacher = build_dataset(f"folder:{tmp_path}"), tiny_teacher()
    pre = Preprocessing(dataset="folder:test", data_options={}, dataset_length=6, teacher_image_size=32,
                        crop=CropConfig(), seed=SEED)
    build_cache(teacher, dataset, tmp_path / "cache", pre, CacheSettings(augmentations=2, dtype="bf16", shard_size=4))
    online = make_dataloader(dataset, batch_size=3, student_size=16, teacher_size=32, seed=SEED)
    cached = replay_dataloader(dataset, {"teacher": open_cache(tmp_path / "cache", pre)}, Augment(16, 32, SEED),
                               batch_size=3, seed=SEED)
    for epoch in (0, 1):
        online.set_epoch(epoch)
        cached.set_epoch(epoch)
        for a, b in zip(online, cached, strict=True):
            assert torch.equal(a.index, b.index) and torch.equal(a.crop, b.crop) and torch.equal(a.pixels, b.pixels)
            want = teacher.encode_image(a.to("cpu").teacher_pixels).patches.to(torch.bfloat16).float()
            torch.testing.assert_close(CachedTargets(tmp_path / "cache")(b).tokens.patches, want, rtol=0, atol=2e-2)


@pytest.mark.parametrize("compress, stored", [("none", {"patches": torch.bfloat16}),
                                              ("int8", {"patches.int8": torch.int8, "patches.scale": torch.float32}),
                                              ("pca:4", {"patches.pca": torch.bfloat16})])
def test_batches_carry_targets_as_stored_and_decode_them_where_they_arrive(compress, stored, setup, tmp_path):
    # The workers hand on the cache's own bytes (a PCA cache's codes, not its float32 product with the basis);
    # the target source decodes a batch to exactly what the reader gives row by row.
    teacher, dataset, pre, _ = setup
    build_cache(teacher, dataset, tmp_path / "cache", pre,
                CacheSettings(augmentations=1, dtype="bf16", shard_size=3, compression=compress))
    reader = open_cache(tmp_path / "cache", pre)
    batch = next(iter(replay_dataloader(dataset, {"teacher": reader}, Augment(32, 32, SEED), batch_size=4,
                                        seed=SEED)))
    carried = batch.teacher_targets["teacher"]
    assert {key: t.dtype for key, t in carried.patches.items()} == stored
    assert carried.cls.dtype == carried.registers.dtype == torch.bfloat16
    got = CachedTargets(tmp_path / "cache")(batch.to("cpu")).tokens
    for i, index in enumerate(batch.index.tolist()):
        row = reader.targets(index, 0)
        for part in ("cls", "registers", "patches"):
            assert torch.equal(getattr(got, part)[i], getattr(row, part)), (part, i)
