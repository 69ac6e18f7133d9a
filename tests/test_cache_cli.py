"""`tipsdistill cache` end to end: a real teacher checkpoint dir, an image folder, a SIGKILLed build resumed."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.cache.manifest import read_manifest
from distill.cache.reader import CacheReader
from distill.cli import main


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(24):
        size = (40 + i, 48)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a photo number {i}")
    return folder


def cache_args(teacher_dir, data, out, *extra):
    return ["cache", "--teacher", str(teacher_dir), "--data", str(data), "--out", str(out),
            "--augmentations", "2", "--shard-size", "2", "--batch-size", "4", *extra]


@pytest.mark.parametrize("extra, words", [
    (["--compress", "zip"], "--compress 'zip'"),
    (["--dtype", "fp8"], "--dtype 'fp8'"),
    (["--image-size", "36"], "--image-size 36"),
    (["--crop-scale", "0.5,2"], "crop scale"),
])
def test_bad_cache_options_are_one_line_errors(tmp_path, tiny_tipsv2_dir, image_folder, capsys, extra, words):
    assert main(cache_args(tiny_tipsv2_dir, image_folder, tmp_path / "c", *extra)) == 2
    err = capsys.readouterr().err  # may also hold transformers' loading progress bar
    assert err.endswith("\n") and err.splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert words in err.splitlines()[-1]


def test_cache_command_and_a_sigkilled_build_resumed_to_the_same_bytes(tmp_path, tiny_tipsv2_dir, image_folder,
                                                                       capsys):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(cache_args(tiny_tipsv2_dir, image_folder, whole, "--compress", "int8", "--dtype", "fp16")) == 0
    manifest = read_manifest(whole)
    assert manifest.complete and manifest.num_shards == 12 and manifest.compression == "int8"
    assert manifest.preprocessing.dataset == f"folder:{image_folder}" and manifest.grid == (4, 4)
    assert CacheReader(whole).targets(23, 1).patches.shape == (4, 4, 32)
    assert "48 targets" in capsys.readouterr().out

    # SIGKILL right after the second shard is recorded (a deterministic crash point, however fast the machine).
    proc = subprocess.run([sys.executable, "-c", "import sys; from distill.cli import main; sys.exit(main())",
                           *cache_args(tiny_tipsv2_dir, image_folder, killed, "--compress", "int8", "--dtype", "fp16")],
                          capture_output=True, env={**os.environ, "TIPSDISTILL_CRASH_AT": "cache-shard:2"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert len(read_manifest(killed).shards) == 2
    assert main(cache_args(tiny_tipsv2_dir, image_folder, killed, "--compress", "int8", "--dtype", "fp16")) == 0
    files = lambda d: {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.suffix == ".safetensors"}  # noqa: E731
    assert files(killed) == files(whole)
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in whole.iterdir())


def test_cache_from_a_recipe_is_accepted_by_that_recipe(tmp_path, tiny_tipsv2_dir):
    from distill.cache.manifest import check_cache_matches
    from distill.cache.replay import recipe_preprocessing
    from distill.recipe_loader import load_recipe
    from distill.data import build_dataset

    overrides = [f"teacher.spec={tiny_tipsv2_dir}", "data.options={size: 40, length: 3}", "seed=7"]
    out = tmp_path / "cache"
    assert main(["cache", "--recipe", "micro", *overrides, "--out", str(out), "--augmentations", "1"]) == 0
    manifest = read_manifest(out)
    recipe = load_recipe("micro", overrides)
    assert manifest.preprocessing.crop == recipe.data.crop and manifest.preprocessing.seed == 7
    assert manifest.preprocessing.teacher_image_size == recipe.student.image_size
    dataset = build_dataset(recipe.data.source, **recipe.data.options)
    check_cache_matches(out, manifest, recipe_preprocessing(recipe, dataset))
