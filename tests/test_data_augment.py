"""The shared crop: explicit parameters, exact replay, one crop for teacher and student, reproducible batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from distill.data import (CropConfig, CropParams, Draws, MaskConfig, apply_crop, build_dataset, crop_generator,
                          make_dataloader, sample_crop)
from distill.data.loader import Augment, collate
from common.errors import UserError


def quadrants(width=60, height=40) -> Image.Image:
    """Four flat colours: any crop, resize or flip shows up in the pixels."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2, : width // 2] = (255, 0, 0)
    pixels[: height // 2, width // 2:] = (0, 255, 0)
    pixels[height // 2:, : width // 2] = (0, 0, 255)
    pixels[height // 2:, width // 2:] = (255, 255, 0)
    return Image.fromarray(pixels)


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(10):
        size = (48 + 8 * (i % 3), 32 + 8 * (i % 4))
        # Smooth random blobs: resampling barely changes them, a different crop changes them a lot. Half are JPEGs,
        # which decode to arrays (`plain_jpeg`), half PNGs, which decode to PIL images.
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        coarse.resize(size, Image.Resampling.BICUBIC).save(tmp_path / f"{i}.{'jpg' if i % 2 else 'png'}")
        (tmp_path / f"{i}.txt").write_text(f"caption {i}")
    return tmp_path


@pytest.mark.parametrize("size", [(40, 60), (200, 10), (64, 64)])
def test_sample_crop_draws_like_torchvision(size):
    """Same generator state -> the same box torchvision's RandomResizedCrop.get_params picks."""
    for seed in range(5):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            expected = RandomResizedCrop.get_params(torch.zeros(3, *size), [0.4, 1.0], [3 / 4, 4 / 3])
        got = sample_crop(size, torch.Generator().manual_seed(seed))
        assert (got.top, got.left, got.height, got.width) == expected


def test_crop_params_round_trip_and_bounds():
    params = sample_crop((40, 60), crop_generator(0, 3, 7))
    assert params == sample_crop((40, 60), crop_generator(0, 3, 7))
    assert CropParams.from_tensor(params.as_tensor()) == params
    flips = {sample_crop((40, 60), crop_generator(0, 0, i)).flip for i in range(20)}
    assert flips == {True, False}
    with pytest.raises(ValueError, match="outside the 40x60"):
        apply_crop(quadrants(), CropParams(0, 0, 60, 40, False), 16)  # (width, height) mixed up
    with pytest.raises(UserError, match="crop scale"):
        CropConfig(scale=(0.5, 0.2))


def test_apply_crop_geometry():
    image = quadrants()
    top_left = apply_crop(image, CropParams(0, 0, 20, 30, False), 8)
    assert top_left.shape == (3, 8, 8) and top_left.dtype == torch.float32
    assert torch.allclose(top_left, torch.tensor([1.0, 0, 0])[:, None, None].expand(3, 8, 8), atol=1e-6)
    whole = apply_crop(image, CropParams(0, 0, 40, 60, True), 8)
    assert torch.allclose(whole[:, 0, 0], torch.tensor([0.0, 1, 0]))  # flipped: green is now top-left


def test_crop_replay_is_bitwise_and_teacher_student_share_it(image_folder):
    ds = build_dataset(f"folder:{image_folder}")
    loader = make_dataloader(ds, batch_size=5, student_size=16, teacher_size=32, seed=3)
    loader.set_epoch(2)
    batch = next(iter(loader)).to("cpu")
    assert batch.pixels.shape == (5, 3, 16, 16) and batch.teacher_pixels.shape == (5, 3, 32, 32)
    assert batch.captions["short"] == [f"caption {i}" for i in batch.index.tolist()]
    assert batch.captions["long"] == [None] * 5
    for row, index in enumerate(batch.index.tolist()):
        params = CropParams.from_tensor(batch.crop[row])
        image = ds[index].image
        assert params == sample_crop((image.height, image.width), crop_generator(3, 2, index))
        assert torch.equal(apply_crop(image, params, 16), batch.pixels[row])
        assert torch.equal(apply_crop(image, params, 32), batch.teacher_pixels[row])
    # Same crop at two resolutions: the teacher view downsampled is the student view, up to resampling.
    down = nnf.interpolate(batch.teacher_pixels, size=16, mode="bilinear", antialias=True, align_corners=False)
    same = (down - batch.pixels).abs().mean()
    other = (down - torch.roll(batch.pixels, 1, dims=0)).abs().mean()  # another image's crop
    assert same < 0.01 and other > 10 * same


def test_views_stay_uint8_until_the_device_and_keep_the_bits_of_a_float_per_view(image_folder):
    """The items and the collated batch carry uint8 views, which `Batch.to` makes float where they arrive; the pixels
    are bit for bit those of torchvision's per-view conversion (the loader's earlier path), so older caches and
    resumed runs still agree."""
    ds = build_dataset(f"folder:{image_folder}")
    augment = Augment(16, 32, seed=3)
    items = [augment(ds[i], 2) for i in range(3)]
    assert {items[0]["pixels"].dtype, items[0]["teacher_pixels"].dtype} == {torch.uint8}
    collated = collate(items)
    assert {collated.pixels.dtype, collated.teacher_pixels.dtype} == {torch.uint8}
    batch = collated.to("cpu")
    for row, item in enumerate(items):
        params = CropParams.from_tensor(item["crop"])
        for size, pixels in ((16, batch.pixels[row]), (32, batch.teacher_pixels[row])):
            view = F.resized_crop(F.to_image(ds[row].image), params.top, params.left, params.height, params.width,
                                  [size, size], antialias=True)
            view = F.hflip(view) if params.flip else view
            assert torch.equal(pixels, F.to_dtype(view, torch.float32, scale=True).as_subclass(torch.Tensor))


def test_same_size_gives_one_tensor(tmp_path):
    quadrants().save(tmp_path / "q.png")
    batch = next(iter(make_dataloader(build_dataset(str(tmp_path)), batch_size=1, student_size=24)))
    assert batch.teacher_pixels is batch.pixels


def epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(b.index, b.crop, b.pixels) for b in loader]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert all(torch.equal(u, v) for u, v in zip(x, y))


def test_batches_depend_only_on_seed_epoch_index(image_folder):
    ds = build_dataset(f"folder:{image_folder}")
    make = lambda workers=0, seed=0: make_dataloader(ds, batch_size=4, student_size=16, seed=seed,  # noqa: E731
                                                     num_workers=workers)
    running = make()
    first, second = epoch_batches(running, 0), epoch_batches(running, 1)
    assert_same(epoch_batches(make(), 1), second)  # a resumed run: fresh loader, epoch set explicitly
    assert_same(epoch_batches(make(workers=2), 1), second)  # worker processes do not change anything
    assert not torch.equal(first[0][0], second[0][0])  # a new order each epoch
    assert not torch.equal(epoch_batches(make(seed=1), 0)[0][1], first[0][1])


def test_accelerate_process_shards_make_up_the_global_batch(image_folder):
    from accelerate.data_loader import prepare_data_loader

    ds = build_dataset(f"folder:{image_folder}")
    single = epoch_batches(make_dataloader(ds, batch_size=4, student_size=16, seed=0), 1)
    shards = [epoch_batches(prepare_data_loader(make_dataloader(ds, batch_size=2, student_size=16, seed=0),
                                                num_processes=2, process_index=rank, put_on_device=False), 1)
              for rank in range(2)]
    joined = [tuple(torch.cat([a, b]) for a, b in zip(x, y)) for x, y in zip(*shards)]
    assert_same(joined, single)


def test_a_batch_travels_to_the_device_as_one_object(tmp_path):
    """`send_to_device` calls `Batch.to`: every tensor moves, the views become float32 there, `teacher_pixels` stays
    the student's tensor when it is one (one copy, not two), and what is no tensor (captions, stats) comes along
    unchanged."""
    from accelerate.utils import send_to_device

    quadrants().save(tmp_path / "q.png")
    loader = make_dataloader(build_dataset(str(tmp_path)), batch_size=1, student_size=24,
                             draws=Draws(MaskConfig(8, 0.5), {"medium": 1.0}))
    batch = next(iter(loader))
    moved = send_to_device(batch, "meta")
    assert moved.pixels.is_meta and moved.teacher_pixels is moved.pixels and moved.mask.is_meta
    assert moved.pixels.dtype == torch.float32 and batch.pixels.dtype == torch.uint8
    assert moved.pixels.is_contiguous()  # the collate's channels-last uint8 reaches the model as it always did
    assert moved.caption_pair.cls1_valid.is_meta and moved.captions is batch.captions and moved.stats is batch.stats
    assert len(moved) == 1 and not batch.pixels.is_meta


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a GPU")
def test_a_pinning_loader_pins_every_tensor_of_the_batch(tmp_path):
    quadrants().save(tmp_path / "q.png")
    loader = make_dataloader(build_dataset(str(tmp_path)), batch_size=1, student_size=24, teacher_size=32,
                             draws=Draws(MaskConfig(8, 0.5)), pin_memory=True)
    batch = next(iter(loader))
    assert batch.pixels.is_pinned() and batch.teacher_pixels.is_pinned() and batch.mask.is_pinned()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_views_made_float_on_the_gpu_have_the_bits_of_the_cpu(image_folder):
    batch = next(iter(make_dataloader(build_dataset(str(image_folder)), batch_size=5, student_size=16,
                                      teacher_size=32)))
    on_gpu, on_cpu = batch.to("cuda", non_blocking=True), batch.to("cpu")
    assert on_gpu.pixels.is_contiguous() and torch.equal(on_gpu.pixels.cpu(), on_cpu.pixels)
    assert torch.equal(on_gpu.teacher_pixels.cpu(), on_cpu.teacher_pixels)


FAULTS_SCRIPT = """
import resource, sys
import numpy as np
from PIL import Image
from distill.data import build_dataset, make_dataloader
folder = sys.argv[1]
rng = np.random.default_rng(0)
for i in range(16):
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((640, 480)).save(f"{folder}/{i}.jpg")
loader = make_dataloader(build_dataset("folder:" + folder), batch_size=8, student_size=224, teacher_size=448)
for epoch in range(4):
    loader.set_epoch(epoch)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    images = sum(len(batch) for batch in loader)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / images)
"""


@pytest.mark.skipif(not __import__("distill.data.loader", fromlist=["x"]).keep_freed_memory(),
                    reason="mallopt is glibc's")
def test_a_loader_process_reuses_the_memory_of_freed_images(tmp_path):
    # Without `keep_freed_memory` glibc hands each decoded photo, view and batch back to the kernel and the next
    # one is page-faulted in again: ~200 faults an image here, against 0-15 once the memory is kept.
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         check=True)
    assert float(out.stdout) < 50, out.stdout
