"""Cache builds at scale: split over processes (killed and resumed per shard), and over wds: streams."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.cache.manifest import read_manifest
from distill.cli import main
from test_cache_cli import cache_args, image_folder  # noqa: F401 (a fixture)
from test_engine_train import _free_port


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def launch_two(args: list[str], **env) -> subprocess.CompletedProcess:
    # As tests/test_engine_train.py: `--multi_gpu` starts torchrun, whose processes join over gloo without a GPU.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
           "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "distill.cli", *args]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_two_processes_killed_and_resumed_build_the_one_process_bytes(tmp_path, tiny_tipsv2_dir,
                                                                      image_folder):  # noqa: F811
    # PCA: the basis is fitted on shard 0 by the main process before the others start.
    extra = ("--compress", "pca:8")
    assert main(cache_args(tiny_tipsv2_dir, image_folder, tmp_path / "one", *extra)) == 0
    two = tmp_path / "two"
    # Each process SIGKILLs itself once it knows of two complete shards: the main after shards 0 and 1 (which
    # the manifest lists), the other after shard 2 (on disk, unlisted, adopted by the resumed build).
    killed = launch_two(cache_args(tiny_tipsv2_dir, image_folder, two, *extra), TIPSDISTILL_CRASH_AT="cache-shard:2")
    assert killed.returncode != 0
    assert read_manifest(two).shards == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert (two / "shard-00002.safetensors").is_file()
    done = launch_two(cache_args(tiny_tipsv2_dir, image_folder, two, *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "48 targets" in done.stdout and "(2 processes)" in done.stdout and "img/s" in done.stderr
    assert "images/s" in done.stdout and done.stdout.count("cache ") == 1  # the main process reports
    assert tree(two) == tree(tmp_path / "one")


def write_stream(root: Path) -> str:
    """Two shards of 4 valid samples; shard 0's position 1 holds no image (the stream skips it)."""
    import tarfile

    from test_data_sources import add_member, colour_image, png_bytes

    for shard in range(2):
        with tarfile.open(root / f"shard-{shard}.tar", "w") as tar:
            for position in range(5 if shard == 0 else 4):
                key = f"{shard}{position:03d}"
                if (shard, position) != (0, 1):
                    add_member(tar, f"{key}.png", png_bytes(colour_image(4 * shard + position, (40, 44))))
                add_member(tar, f"{key}.txt", f"sample {key}".encode())
    return f"wds:{root}/shard-{{0..1}}.tar"


def test_a_wds_cache_replays_the_online_run(tmp_path, tiny_tipsv2_dir):
    from distill.cache.reader import CacheReader
    from common.errors import UserError
    from test_cache_distill import losses, recipe_args

    args = recipe_args(tiny_tipsv2_dir, f"data.source={write_stream(tmp_path)}", "data.options={}")
    assert main(["cache", *args, "--out", str(tmp_path / "cache"), "--augmentations", "2"]) == 0
    manifest = read_manifest(tmp_path / "cache")
    assert manifest.layout == "data-shards" and manifest.complete and manifest.num_shards == 2
    reader = CacheReader(tmp_path / "cache")
    assert reader.targets((1 << 32) | 3, 1).patches.shape == (4, 4, 32)
    assert reader.crop(2, 0) != reader.crop(2, 1)  # shard 0, position 2: after the skipped position 1
    with pytest.raises(UserError, match="holds no targets for sample 0#1"):
        reader.crop(1, 0)
    # 8 samples, 4 a step: steps 1-2 are epoch 0, steps 3-4 epoch 1, both among the K=2 stored crops.
    assert main(["distill", *args, "--out", str(tmp_path / "online")]) == 0
    assert main(["distill", *args, f"cache={tmp_path / 'cache'}", "--out", str(tmp_path / "cached")]) == 0
    online, cached = losses(tmp_path / "online"), losses(tmp_path / "cached")
    assert len(online) == len(cached) == 4
    for a, b in zip(online, cached):
        assert abs(a - b) <= 2 ** -8 * abs(a) + 1e-4


def test_a_wds_data_shard_without_a_valid_sample_is_refused_by_name(tmp_path):
    import tarfile

    from common.errors import UserError
    from distill.cache.manifest import Preprocessing
    from distill.cache.writer import CacheSettings, build_cache
    from distill.data import build_dataset
    from distill.data.augment import CropConfig
    from test_cache_build import tiny_teacher
    from test_data_sources import add_member

    spec = write_stream(tmp_path)
    with tarfile.open(tmp_path / "shard-1.tar", "w") as tar:
        add_member(tar, "only.txt", b"a caption without its image")
    dataset = build_dataset(spec)
    pre = Preprocessing(spec, {}, None, 32, CropConfig(), 0)
    with pytest.raises(UserError, match=r"data shard .*shard-1.tar holds no valid sample"):
        build_cache(tiny_teacher(), dataset, tmp_path / "cache", pre, CacheSettings(augmentations=1))
