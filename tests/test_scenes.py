"""The built-in scene dataset: deterministic, disjoint splits, exact classes and depth, captions that name every class."""
from __future__ import annotations

import numpy as np
import pytest

from distill.data.scenes import (CAMERA_HEIGHT, COLOURS, SCENE_CLASSES, STUFF_CLASSES, THING_CLASSES, SceneDataset,
                                 caption_corpus, floor_row, make_scene)
from common.errors import UserError


def test_same_seed_same_scene_and_other_seed_differs():
    a, b = SceneDataset("train", length=4, seed=3), SceneDataset("train", length=4, seed=3)
    for i in range(4):
        assert np.array_equal(np.asarray(a[i].image), np.asarray(b[i].image))
        assert a[i].captions == b[i].captions
        assert np.array_equal(a.scene(i).depth, b.scene(i).depth) and np.array_equal(a.scene(i).mask, b.scene(i).mask)
    other = SceneDataset("train", length=4, seed=4)
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(other[0].image))


def test_train_validation_and_heldout_splits_are_disjoint():
    splits = {split: {np.asarray(SceneDataset(split, length=200)[i].image).tobytes() for i in range(200)}
              for split in ("train", "validation", "heldout")}
    assert all(len(images) == 200 for images in splits.values())
    assert not splits["train"] & splits["heldout"] and not splits["train"] & splits["validation"]
    assert not splits["validation"] & splits["heldout"]


def test_evaluation_reads_the_validation_split_only_when_asked():
    from distill.eval.inputs import open_image_set
    from distill.eval.readers import open_segmentation
    from distill.eval.readers.depth import open_depth

    assert open_segmentation("scenes:length=4").scenes.split == "heldout"
    chosen = open_segmentation("scenes:length=4,split=validation")
    assert chosen.scenes.split == "validation" and "split=validation" in chosen.name
    assert open_segmentation("scenes:split=validation", "train").scenes.split == "train"  # a probe's training data
    assert open_depth("scenes:split=validation").scenes.split == "validation"
    assert open_image_set("scenes:split=validation").split == "validation"
    for bad in ("scenes:split=train", "scenes:split=test", "scenes:length=ten"):
        with pytest.raises(UserError, match="heldout, validation"):
            open_segmentation(bad)


def test_every_pixel_has_a_class_named_in_the_captions():
    for i in range(60):
        scene = make_scene(0, "heldout", i, size=64)
        words = set(" ".join(scene.captions.values()).replace(",", " ").replace(":", " ").split())
        present = {SCENE_CLASSES[k] for k in np.unique(scene.mask)}
        assert present <= words, (present - words, scene.captions)
        # Both surfaces are stuff classes and every object is a thing: no catch-all class.
        assert {scene.wall, scene.floor} <= present and scene.wall != scene.floor
        assert {o.colour for o in scene.objects} <= present  # objects overlap only slightly: none is hidden
    assert set(STUFF_CLASSES) | set(THING_CLASSES) == set(SCENE_CLASSES) and "background" not in SCENE_CLASSES


def test_masks_match_the_painted_pixels():
    for i in range(30):
        scene = make_scene(0, "heldout", i, size=64)
        pixels = np.asarray(scene.image, dtype=np.float32)
        assert scene.mask.dtype == np.uint8 and scene.mask.shape == (64, 64)
        surfaces = np.isin(scene.mask, [SCENE_CLASSES.index(t) for t in STUFF_CLASSES])
        for obj in scene.objects:
            region = scene.mask == obj.class_id
            mean = pixels[region].mean(0)
            # The labelled pixels carry the object's colour, closer to it than to any other colour.
            assert min(COLOURS, key=lambda c: np.linalg.norm(mean - np.asarray(COLOURS[c]))) == obj.colour
            assert np.linalg.norm(pixels[surfaces].mean(0) - mean) > 60


def test_depth_is_exact_geometry():
    """Floor rows recede upward as f * h / (row - horizon); the wall is one plane; objects are upright
    billboards whose base lies on the floor row of their own depth; nearer objects are painted over farther."""
    size = 64
    for i in range(30):
        scene = make_scene(1, "train", i, size=size)
        assert scene.depth.dtype == np.float32 and scene.depth.shape == (size, size)
        wall_depth = scene.depth[0, 0]
        floor_id = SCENE_CLASSES.index(scene.floor)
        rows = np.nonzero((scene.mask == floor_id).any(1))[0]
        for row in rows:
            values = scene.depth[row][scene.mask[row] == floor_id]
            assert np.allclose(values, values[0])  # one depth per floor row
            assert values[0] < wall_depth
        # Recovering the horizon from two floor rows gives the same camera height for every row.
        if len(rows) >= 2:
            d = scene.depth[rows, :][np.arange(len(rows)), np.argmax(scene.mask[rows] == floor_id, axis=1)]
            horizon = rows[-1] + 0.5 - size * CAMERA_HEIGHT / d[-1]
            assert np.allclose(size * CAMERA_HEIGHT / (rows + 0.5 - horizon), d, rtol=1e-5)
            for obj in scene.objects:
                assert floor_row(obj.depth, horizon, size) == pytest.approx(
                    obj.cy + {"circle": 1.0, "square": 0.85, "triangle": 0.55}[obj.shape] * obj.radius, abs=1e-3)
                visible = scene.mask == obj.class_id
                assert np.all(scene.depth[visible] == np.float32(obj.depth))
        for obj in scene.objects:  # pixel size = focal * metric size / depth: nearer objects are larger
            assert 0.45 <= obj.radius * obj.depth / size <= 0.65
        assert [o.depth for o in scene.objects] == sorted((o.depth for o in scene.objects), reverse=True)


def test_sample_captions_and_items():
    ds = SceneDataset("heldout", size=48, length=5, seed=1)
    sample = ds[2]
    assert sample.image.mode == "RGB" and sample.image.size == (48, 48) and sample.index == 2
    assert set(sample.captions) == {"short", "medium", "long"}
    scene = ds.scene(2)
    for obj in scene.objects:
        assert f"{obj.colour} {obj.shape}" in sample.captions["medium"]
        assert f"{obj.colour} {obj.shape}" in sample.captions["long"]
    assert scene.mask.shape == scene.depth.shape == (48, 48)
    assert ds.item_name(2).startswith("heldout")
    with pytest.raises(IndexError):
        ds[5]


def test_bad_split_is_a_user_error():
    with pytest.raises(UserError, match="split"):
        SceneDataset("val")


def test_caption_corpus_builds_a_tokenizer():
    from teachers.tokenizer import build_tokenizer

    corpus = caption_corpus(length=50)
    tokenizer = build_tokenizer(corpus, vocab_size=128)
    ids = tokenizer(["a red circle on a sand floor"])["input_ids"][0]
    assert tokenizer.unk_token_id not in ids
