"""Depth: NYUv2 in both layouts, the metrics by hand, both heads, and the DPT head against transformers' own."""
import json
import sys

import numpy as np
import pytest
import torch
from eval_stubs import COLOURS, ColourModel, single_thread  # noqa: F401 (fixture)
from PIL import Image

from distill.cli import main
from distill.eval import evaluate
from distill.eval.metrics import DepthMeter, depth_errors, eigen_crop_mask
from distill.eval.readers.depth import open_depth
from common.errors import UserError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    """A random 4-block TIPSv2 vision tower saved with save_pretrained (the dpt head reads 4 different blocks)."""
    from transformers import Tipsv2VisionConfig, Tipsv2VisionModel

    torch.manual_seed(0)
    config = Tipsv2VisionConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                                patch_size=8, image_size=32, num_register_tokens=1)
    out = tmp_path_factory.mktemp("vision") / "tiny"
    Tipsv2VisionModel(config).save_pretrained(out)
    return out
H, W = 24, 32
# ColourModel's features are one-hot colours: red, green and blue 8 px blocks stand 2, 2.5 and 3 m away.
DEPTH_OF = {"red": 2.0, "green": 2.5, "blue": 3.0}
FAST = dict(iterations=60, lr=0.3, batch_size=4, crop=24, overlays=1)


def _frames(count: int, seed: int = 0):
    """(images (N, H, W, 3) uint8, depths (N, H, W) float32 metres), 8 px blocks, no two frames alike."""
    rng = np.random.default_rng(seed)
    names = list(DEPTH_OF)
    blocks = rng.integers(0, len(names), (count, H // 8, W // 8))
    blocks[:, 0, :3] = [0, 1, 2]  # every depth in every frame
    label = np.kron(blocks, np.ones((1, 8, 8), int))
    images = np.array([COLOURS[n] for n in names], np.uint8)[label]
    depths = np.array([DEPTH_OF[n] for n in names], np.float32)[label]
    return images, depths


def _labeled_mat(root, count=5, train=(1, 2, 3), test=(4, 5)):
    """nyu_depth_v2_labeled.mat as MATLAB v7.3 writes it (HDF5; MATLAB's 480x640x3xN read row-major is
    (N, 3, 640, 480): width before height) and the official splits.mat (MATLAB v5, 1-based column vectors)."""
    import h5py
    import scipy.io

    images, depths = _frames(count)
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = images.transpose(0, 3, 2, 1)  # (N, H, W, 3) -> (N, 3, W, H)
        f["depths"] = depths.transpose(0, 2, 1)
        f["labels"] = np.zeros((count, W, H), np.uint16)
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array(train, float)[:, None],
                                           "testNdxs": np.array(test, float)[:, None]})
    return root, images, depths


def _png_folder(root, train=4, test=2):
    """The BTS / depth-toolbox layout: scene folders of rgb_*.jpg and sync_depth_*.png (uint16 millimetres)."""
    lines = {"nyu_train.txt": [], "nyu_test.txt": []}
    for listing, count, seed in (("nyu_train.txt", train, 0), ("nyu_test.txt", test, 1)):
        images, depths = _frames(count, seed)
        for i, (image, depth) in enumerate(zip(images, depths)):
            scene = root / f"room_{seed:04d}"
            scene.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(scene / f"rgb_{i:05d}.png")
            Image.fromarray((depth * 1000).astype(np.uint16)).save(scene / f"sync_depth_{i:05d}.png")
            lines[listing].append(f"/{scene.name}/rgb_{i:05d}.png /{scene.name}/sync_depth_{i:05d}.png 518.8579")
    for name, content in lines.items():
        (root / name).write_text("\n".join(content) + "\n")
    return root


def test_metrics_of_a_perfect_and_a_known_predictor():
    gt = torch.tensor([1.0, 2.0, 4.0, 8.0])
    assert depth_errors(gt, gt) == {"rmse": 0.0, "abs_rel": 0.0, "log10": 0.0, "delta1": 100.0, "delta2": 100.0,
                                    "delta3": 100.0}
    errors = depth_errors(1.5 * gt, gt)  # everything 1.5x as far: fails delta1 (1.25), passes delta2 (1.5625)
    assert errors["rmse"] == pytest.approx(np.sqrt((0.25 + 1 + 4 + 16) / 4))
    assert errors["abs_rel"] == pytest.approx(0.5) and errors["log10"] == pytest.approx(np.log10(1.5))
    assert (errors["delta1"], errors["delta2"], errors["delta3"]) == (0.0, 100.0, 100.0)


def test_meter_clips_predictions_masks_invalid_depth_and_averages_per_image():
    meter = DepthMeter(min_depth=0.5, max_depth=5.0)
    meter.update(torch.tensor([[1.0, 20.0], [3.0, 1.0]]), np.array([[1.0, 5.0], [3.0, 0.0]]))  # 5.0, 0: not scored
    meter.update(torch.tensor([[0.1, 2.0]]), np.array([[1.0, 2.0]]))  # 0.1 clipped to 0.5
    result = meter.result()
    assert result["rmse"] == pytest.approx((0 + np.sqrt(0.25 / 2)) / 2)
    assert result["delta1"] == pytest.approx((100 + 50) / 2)
    assert DepthMeter(0.5, 5).result()["rmse"] != DepthMeter(0.5, 5).result()["rmse"]  # NaN: nothing scored


def test_eigen_crop_on_nyu_frames_and_scaled_frames():
    mask = eigen_crop_mask((480, 640))
    assert mask.sum() == (471 - 45) * (601 - 41) and mask[45, 41] and not mask[44, 41] and not mask[45, 601]
    small = eigen_crop_mask((24, 32))
    assert small.sum() == (24 - 2) * (30 - 2)


def test_labeled_mat_reader_keeps_the_image_orientation(tmp_path):
    root, images, depths = _labeled_mat(tmp_path / "nyu")
    val = open_depth(f"nyu:{root}")
    assert len(val) == 2 and val.eigen_crop and (val.min_depth, val.max_depth) == (1e-3, 10.0)
    sample = val[1]  # testNdxs[1] = image 5
    assert sample.name == "0005" and sample.image.size == (W, H)
    np.testing.assert_array_equal(np.asarray(sample.image), images[4])
    np.testing.assert_array_equal(sample.depth, depths[4])
    train = open_depth(f"nyu:{root / 'nyu_depth_v2_labeled.mat'}", "train")
    assert [train[i].name for i in range(len(train))] == ["0001", "0002", "0003"]


def test_png_folder_reader_reads_millimetres(tmp_path):
    root = _png_folder(tmp_path / "nyu")
    val = open_depth(f"nyu:{root}")
    images, depths = _frames(2, seed=1)
    assert len(val) == 2 and len(open_depth(f"nyu:{root}", "train")) == 4
    sample = val[1]
    assert sample.name == "room_0001_rgb_00001" and sample.depth.dtype == np.float32
    np.testing.assert_allclose(sample.depth, depths[1])
    np.testing.assert_array_equal(np.asarray(sample.image), images[1])


@pytest.mark.parametrize("layout", ["mat", "png"])
def test_depth_from_features_that_encode_it(tmp_path, layout):
    """A linear probe on one-hot colour features that say which of three depths a block is at: delta1 100 and
    an RMSE of centimetres, far below the constant (train mean) predictor's."""
    root = _labeled_mat(tmp_path / "nyu")[0] if layout == "mat" else _png_folder(tmp_path / "nyu")
    workers = 1 if layout == "mat" else 0  # the .mat is opened per item, so a worker process reads it too
    report = evaluate({"m": ColourModel()}, "depth", f"nyu:{root}", tmp_path / "out", quiet=True, workers=workers,
                      **FAST)
    scores, baselines = report["models"]["m"], report["baselines"]
    assert scores["delta1"] == scores["delta2"] == 100.0
    assert scores["rmse"] < 0.05 and scores["abs_rel"] < 0.02
    assert baselines["train_mean_rmse"] > 0.3 and 2.0 < baselines["train_mean_depth"] < 3.0
    assert len(list((tmp_path / "out/overlays/m").glob("*.png"))) == 1 and (tmp_path / "out/pca/m.png").is_file()
    assert "| rmse | " in (tmp_path / "out/report.md").read_text()


def test_the_lowest_depth_error_is_bold():
    from distill.eval.report import markdown_table

    models = {"a": {"rmse@64": 1.0, "delta1@64": 50.0}, "b": {"rmse@64": 2.0, "delta1@64": 60.0}}
    table = markdown_table({"models": models})
    assert "| rmse@64 | **1.00** | 2.00 |" in table and "| delta1@64 | 50.00 | **60.00** |" in table


def test_missing_h5py_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    root = _labeled_mat(tmp_path / "nyu")[0]
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    code = main(["eval", "--model", "a=unused", "--task", "depth", "--dataset", f"nyu:{root}", "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err == ('error: reading nyu_depth_v2_labeled.mat needs the h5py package, which is not installed; '
                   'expected pip install "tipsdistill[nyu]"')


@pytest.mark.parametrize("setup,message", [
    (lambda root: (root / "splits.mat").unlink(), "NYUv2 split file not found: "),
    (lambda root: (root / "nyu_depth_v2_labeled.mat").write_bytes(b"not hdf5"), "cannot be read as HDF5"),
    (lambda root: root.joinpath("nyu_depth_v2_labeled.mat").unlink(), "holds no NYUv2 layout"),
])
def test_broken_nyu_layouts_are_one_line_errors(tmp_path, setup, message):
    root = _labeled_mat(tmp_path / "nyu")[0]
    setup(root)
    with pytest.raises(UserError, match=message):
        open_depth(f"nyu:{root}")


def test_png_folder_with_8_bit_depth_is_refused(tmp_path):
    root = _png_folder(tmp_path / "nyu", train=1, test=1)
    Image.fromarray(np.full((H, W), 3, np.uint8)).save(root / "room_0001/sync_depth_00000.png")
    with pytest.raises(UserError, match="has mode L; expected a 16-bit single-channel PNG of millimetres"):
        open_depth(f"nyu:{root}")[0]


def test_dpt_head_matches_transformers_depth_model(vision_dir):
    """Our head on the teacher's `intermediate_layers` equals Tipsv2DptForDepthEstimation run end to end with
    the same vision weights as its backbone: same blocks, same layernorm, same token layout."""
    from transformers import Tipsv2DptForDepthEstimation

    from distill.eval.depth import DptDepthHead, dpt_config
    from distill.eval.readers.depth import SceneDepth
    from teachers import load_teacher

    teacher = load_teacher(str(vision_dir))
    config = dpt_config(teacher.vision.config, 32, SceneDepth(length=1))
    assert config.backbone_config.out_indices == [1, 2, 3, 4]
    torch.manual_seed(0)
    head = DptDepthHead(config).eval()
    official = Tipsv2DptForDepthEstimation(config).eval()
    official.backbone.load_state_dict(teacher.vision.state_dict())
    missing, unexpected = official.load_state_dict(head.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("backbone.") for key in missing)
    pixels = torch.rand(2, 3, 40, 32)
    with torch.no_grad():
        expected = official(pixel_values=pixels).predicted_depth
        ours = head(teacher.intermediate_layers(pixels, config.backbone_config.out_indices), (5, 4))
    torch.testing.assert_close(ours[:, 0], expected)


def test_cli_both_heads_on_scenes(tmp_path, vision_dir, capsys):
    for head in ("linear", "dpt"):
        code = main(["eval", "--model", f"t={vision_dir}", "--task", "depth", "--head", head, "--dataset",
                     "scenes:length=3,size=32", "--iterations", "2", "--out", str(tmp_path / head)])
        assert code == 0
        report = json.loads((tmp_path / head / "report.json").read_text())
        assert set(report["models"]["t"]) == {"rmse", "abs_rel", "log10", "delta1", "delta2", "delta3"}
        assert report["options"]["head"] == head and report["options"]["crop"] == 32
    assert report["options"]["dpt_width"] == 32  # the scenes' default
    assert "| rmse | " in capsys.readouterr().out


def test_dpt_head_needs_a_model_with_intermediate_layers(tmp_path, tiny_tipsv2_dir):
    with pytest.raises(UserError, match="model m \\(ColourModel\\) cannot return intermediate layers"):
        evaluate({"m": ColourModel()}, "depth", "scenes:length=2,size=32", tmp_path, quiet=True, head="dpt",
                 iterations=1)
    with pytest.raises(UserError, match="model t has 2 blocks; the dpt head reads 4 different blocks"):
        evaluate({"t": str(tiny_tipsv2_dir)}, "depth", "scenes:length=2,size=32", tmp_path, quiet=True, head="dpt",
                 iterations=1)


def test_nyu_ground_truth_outside_the_eigen_crop_does_not_count(tmp_path):
    """The PNG layout is NYUv2, scored inside the Eigen crop only: a ground truth wrong only outside the crop
    (rows 0-1, columns 0-1 and 30-31 of these 24x32 frames) leaves every score as it was."""
    scores = {}
    for case in ("whole", "wrong_outside"):
        root = _png_folder(tmp_path / case)
        if case == "wrong_outside":
            for path in sorted(root.glob("room_0001/sync_depth_*.png")):  # the val (test) frames
                depth = np.asarray(Image.open(path)).copy()
                depth[:2], depth[:, :2], depth[:, 30:] = 9000, 9000, 9000  # 9 m: inside the valid range
                Image.fromarray(depth).save(path)
        report = evaluate({"m": ColourModel()}, "depth", f"nyu:{root}", tmp_path / f"out-{case}", quiet=True,
                          workers=0, **FAST)
        scores[case] = report["models"]["m"]
    assert scores["wrong_outside"] == pytest.approx(scores["whole"])
    assert eigen_crop_mask((H, W)).sum() == (24 - 2) * (30 - 2)  # the border above is exactly what it leaves out
