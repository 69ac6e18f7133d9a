"""The built-in scene dataset: deterministic, disjoint splits, masks that match the painted objects."""
from __future__ import annotations

import numpy as np
import pytest

from distill.data.scenes import COLOURS, SCENE_CLASSES, SceneDataset, caption_corpus, make_scene
from teachers.errors import UserError


def test_same_seed_same_scene_and_other_seed_differs():
    a, b = SceneDataset("train", length=4, seed=3), SceneDataset("train", length=4, seed=3)
    for i in range(4):
        assert np.array_equal(np.asarray(a[i].image), np.asarray(b[i].image))
        assert a[i].captions == b[i].captions
    other = SceneDataset("train", length=4, seed=4)
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(other[0].image))


def test_heldout_split_is_disjoint_from_train():
    train = {np.asarray(SceneDataset("train", length=200)[i].image).tobytes() for i in range(200)}
    heldout = {np.asarray(SceneDataset("heldout", length=200)[i].image).tobytes() for i in range(200)}
    assert len(train) == 200 and len(heldout) == 200
    assert not train & heldout


def test_masks_match_the_painted_objects():
    for i in range(30):
        scene = make_scene(0, "heldout", i, size=64)
        pixels = np.asarray(scene.image, dtype=np.float32)
        assert scene.mask.dtype == np.uint8 and scene.mask.shape == (64, 64)
        assert set(np.unique(scene.mask)) <= set(range(len(SCENE_CLASSES)))
        background = pixels[scene.mask == 0]
        for obj in scene.objects:
            region = scene.mask == obj.class_id
            assert region.sum() > 100  # large relative to an 8-px patch
            mean = pixels[region].mean(0)
            # The masked pixels carry the object's colour, closer to it than to any other colour.
            nearest = min(COLOURS, key=lambda c: np.linalg.norm(mean - np.asarray(COLOURS[c])))
            assert nearest == obj.colour
            assert np.linalg.norm(background.mean(0) - mean) > 60
        assert (scene.mask == 0).mean() > 0.2


def test_sample_captions_and_segmentation_item():
    ds = SceneDataset("heldout", size=48, length=5, seed=1)
    sample = ds[2]
    assert sample.image.mode == "RGB" and sample.image.size == (48, 48) and sample.index == 2
    assert set(sample.captions) == {"short", "medium", "long"}
    scene = ds.scene(2)
    assert sample.captions["short"] in sample.captions["medium"]
    for obj in scene.objects:
        assert f"{obj.colour} {obj.shape}" in sample.captions["medium"]
        assert f"{obj.colour} {obj.shape}" in sample.captions["long"]
    name, image, mask = ds.segmentation_item(2)
    assert name.startswith("heldout") and image.size == (48, 48) and mask.shape == (48, 48)
    assert SCENE_CLASSES[0] == "background"
    with pytest.raises(IndexError):
        ds[5]


def test_bad_split_is_a_user_error():
    with pytest.raises(UserError, match="split"):
        SceneDataset("validation")


def test_caption_corpus_builds_a_tokenizer():
    from teachers.tokenizer import build_tokenizer

    corpus = caption_corpus(length=50)
    tokenizer = build_tokenizer(corpus, vocab_size=128)
    ids = tokenizer(["a red circle"])["input_ids"][0]
    assert tokenizer.unk_token_id not in ids
