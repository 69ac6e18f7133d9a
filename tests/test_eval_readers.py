"""Every segmentation reader on a tiny fixture written in that dataset's real layout."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.cli import main
from distill.eval.metrics import IGNORE_INDEX
from distill.eval.readers import open_segmentation
from common.errors import UserError

H, W = 12, 16


def _image(path: Path, size=(W, H), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _mask(path: Path, values: np.ndarray, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8))
    if mode == "P":
        image.putpalette(_voc_palette())  # L -> P, indices unchanged
    image.save(path)


def _voc_palette() -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), as VOC's own SegmentationClass PNGs carry it."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


def _labels(values) -> np.ndarray:
    grid = np.zeros((H, W), dtype=np.int64)
    for i, v in enumerate(values):
        grid[:, i * (W // len(values)) : (i + 1) * (W // len(values))] = v
    return grid


def test_ade20k(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _image(root / "images/validation/ADE_val_00000001.jpg")
    _mask(root / "annotations/validation/ADE_val_00000001.png", _labels([0, 1, 150, 13]))
    data = open_segmentation(f"ade20k:{tmp_path}")  # the parent directory is accepted too
    assert len(data) == 1 and len(data.class_names) == 150 and data.background is None
    sample = data[0]
    assert sample.name == "ADE_val_00000001" and sample.image.mode == "RGB" and sample.image.size == (W, H)
    np.testing.assert_array_equal(sample.label, _labels([IGNORE_INDEX, 0, 149, 12]))
    assert data.class_names[0] == "wall" and data.class_names[149] == "flag"


@pytest.mark.parametrize("kind", ["voc", "voc20"])
def test_voc_palette_pngs_with_and_without_background(tmp_path, kind):
    root = tmp_path / "VOCdevkit/VOC2012"
    for i, name in enumerate(["2007_000032", "2007_000039"]):
        _image(root / f"JPEGImages/{name}.jpg", seed=i)
        _mask(root / f"SegmentationClass/{name}.png", _labels([0, 1, 15, 255]), mode="P")
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000032\n2007_000039\n")
    with Image.open(root / "SegmentationClass/2007_000032.png") as png:
        assert png.mode == "P"
    data = open_segmentation(f"{kind}:{tmp_path}")
    assert len(data) == 2 and data[1].name == "2007_000039"
    if kind == "voc":
        assert len(data.class_names) == 21 and data.class_names[data.background] == "background"
        np.testing.assert_array_equal(data[0].label, _labels([0, 1, 15, IGNORE_INDEX]))
    else:
        assert len(data.class_names) == 20 and data.background is None and data.class_names[0] == "aeroplane"
        np.testing.assert_array_equal(data[0].label, _labels([IGNORE_INDEX, 0, 14, IGNORE_INDEX]))
        assert data.class_names[14] == "person"


def test_pascal_context_59_mmseg_layout(tmp_path):
    root = tmp_path / "VOCdevkit/VOC2010"
    _image(root / "JPEGImages/2008_000002.jpg")
    _mask(root / "SegmentationClassContext/2008_000002.png", _labels([0, 1, 59, 15]))
    (root / "ImageSets/SegmentationContext").mkdir(parents=True)
    (root / "ImageSets/SegmentationContext/val.txt").write_text("2008_000002\n")
    data = open_segmentation(f"context:{root}")
    assert len(data.class_names) == 59 and data.background is None
    np.testing.assert_array_equal(data[0].label, _labels([IGNORE_INDEX, 0, 58, 14]))
    assert data.class_names[58] == "wood" and data.class_names[14] == "person"


def test_coco_stuff_171_train_ids(tmp_path):
    _image(tmp_path / "images/val2017/000000000139.jpg")
    _mask(tmp_path / "annotations/val2017/000000000139_labelTrainIds.png", _labels([0, 170, 255, 91]))
    data = open_segmentation(f"cocostuff:{tmp_path}")
    assert len(data.class_names) == 171 and data[0].name == "000000000139"
    np.testing.assert_array_equal(data[0].label, _labels([0, 170, IGNORE_INDEX, 91]))
    assert data.class_names[0] == "person" and data.class_names[170] == "wood"


def test_generic_folder(tmp_path):
    (tmp_path / "classes.txt").write_text("background\nred\nblue\n")
    _image(tmp_path / "images/a.png")
    _mask(tmp_path / "masks/a.png", _labels([0, 1, 2, 255]))
    data = open_segmentation(f"folder:{tmp_path}")
    assert data.class_names == ["background", "red", "blue"] and data.background == 0
    np.testing.assert_array_equal(data[0].label, _labels([0, 1, 2, IGNORE_INDEX]))
    _mask(tmp_path / "masks/a.png", _labels([0, 1, 7, 255]))
    with pytest.raises(UserError, match="a.png holds value 7"):
        open_segmentation(f"folder:{tmp_path}")[0]


def test_heldout_scenes():
    data = open_segmentation("scenes:length=3,size=64")
    assert len(data) == 3 and data.background is None and "background" not in data.class_names
    assert [data.class_names[k] for k in data.things] == ["red", "green", "blue", "yellow", "purple"]
    sample = data[2]
    assert sample.image.size == (64, 64) and sample.label.shape == (64, 64)
    assert set(np.unique(sample.label)) <= set(range(len(data.class_names)))
    with pytest.raises(UserError, match="scenes dataset option"):
        open_segmentation("scenes:length=three")


def _eval(dataset, tmp_path, capsys):
    code = main(["eval", "--model", "t=unused", "--task", "zeroshot-seg", "--dataset", dataset,
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    return code, err


def test_missing_split_file_is_a_one_line_error(tmp_path, capsys):
    root = tmp_path / "VOC2012"
    _image(root / "JPEGImages/x.jpg")
    code, err = _eval(f"voc:{root}", tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: split file not found") and "ImageSets/Segmentation/val.txt" in err
    assert not (tmp_path / "out/report.json").exists()


def test_mask_size_mismatch_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    root = tmp_path / "ADEChallengeData2016"
    _image(root / "images/validation/ADE_val_00000007.jpg")
    _mask(root / "annotations/validation/ADE_val_00000007.png", np.zeros((H + 1, W), np.uint8))
    code, err = _eval(f"ade20k:{root}", tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "annotations/validation/ADE_val_00000007.png is 16x13" in err and "expected equal sizes" in err


def test_unknown_dataset_kind(tmp_path, capsys):
    code, err = _eval(f"cityscapes:{tmp_path}", tmp_path, capsys)
    assert code == 2 and "KIND in ade20k, voc" in err


def test_truncated_image_is_a_one_line_error(tmp_path):
    (tmp_path / "classes.txt").write_text("background\nred\n")
    _image(tmp_path / "images/a.jpg", size=(64, 48))
    _mask(tmp_path / "masks/a.png", np.zeros((48, 64), np.uint8))
    data = (tmp_path / "images/a.jpg").read_bytes()
    (tmp_path / "images/a.jpg").write_bytes(data[: len(data) // 2])
    dataset = open_segmentation(f"folder:{tmp_path}")  # the header is intact: found when the pixels are read
    with pytest.raises(UserError, match=r"image .*a.jpg cannot be read"):
        dataset[0]
