"""Linear-probe segmentation, the probe machinery, --resolutions and the dense tasks' one-line errors."""
import json

import numpy as np
import pytest
import torch
from eval_stubs import COLOURS, ColourModel, single_thread  # noqa: F401 (fixture)
from PIL import Image

from distill.cli import main
from distill.eval import evaluate
from distill.eval.probe import FeatureStore, LinearHead, ProbeOptions, _batch_order, _schedule, train_head
from distill.eval.readers import ProbeProtocol, open_segmentation
from common.errors import UserError

pytestmark = pytest.mark.usefixtures("single_thread")
PALETTE = np.array(list(COLOURS.values()), dtype=np.uint8)
FAST = dict(iterations=60, lr=0.05, batch_size=4, crop=24, overlays=1)


def _ade20k(root, counts={"training": 4, "validation": 2}):
    """ADEChallengeData2016 with 24x32 JPEGs of solid 8 px colour blocks; ADE label k+1 = colour k."""
    rng = np.random.default_rng(0)
    for split, count in counts.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            blocks = rng.integers(0, len(COLOURS), (3, 4))
            blocks[0, 0] = i % len(COLOURS)  # every colour in every split
            label = np.kron(blocks, np.ones((8, 8), int))
            name = f"ADE_{split[:5]}_{i:08d}"
            Image.fromarray(PALETTE[label]).save(root / "images" / split / f"{name}.jpg", quality=100, subsampling=0)
            Image.fromarray((label + 1).astype(np.uint8)).save(root / "annotations" / split / f"{name}.png")
    return root


def test_linear_head_on_one_hot_features_reaches_100_miou(tmp_path):
    """ColourModel's patch features are one-hot colours: a trained BatchNorm + 1x1 conv separates them exactly,
    and with 2 px patches the bilinearly upsampled logits keep every block border pixel on its own side."""
    _ade20k(tmp_path / "ADEChallengeData2016")
    report = evaluate({"a": ColourModel(), "b": ColourModel()}, "linear-seg", f"ade20k:{tmp_path}", tmp_path / "out",
                      quiet=True, **FAST)
    scores = report["models"]["a"]
    assert scores["miou"] == scores["pixel_acc"] == 100.0
    assert {k for k, v in scores["per_class_iou"].items() if v is not None} == {"wall", "building", "sky", "floor"}
    assert report["models"]["b"] == scores  # seeded: the same model trains to the same head
    assert 0 < report["baselines"]["majority_class_miou"] < 100
    assert report["options"]["iterations"] == 60 and report["options"]["crop"] == 24
    assert json.loads((tmp_path / "out/report.json").read_text()) == report
    assert (tmp_path / "out/pca/a.png").is_file() and len(list((tmp_path / "out/overlays/a").glob("*.png"))) == 1


def test_disk_feature_cache_trains_the_same_head_and_is_removed(tmp_path):
    _ade20k(tmp_path / "ADEChallengeData2016")
    options = dict(FAST, iterations=10, overlays=0)
    memory = evaluate({"m": ColourModel()}, "linear-seg", f"ade20k:{tmp_path}", tmp_path / "a", quiet=True, **options)
    disk = evaluate({"m": ColourModel()}, "linear-seg", f"ade20k:{tmp_path}", tmp_path / "b", quiet=True,
                    feature_cache=tmp_path / "cache", **options)
    assert memory["models"] == disk["models"]
    assert not any((tmp_path / "cache").iterdir())


def test_training_windows_tile_the_resized_image(tmp_path):
    """24x32 images at crop 24: windows 24x24 at x = 0 and 8 (stride 16, the last shifted to the border)."""
    _ade20k(tmp_path / "ADEChallengeData2016", {"training": 2, "validation": 1})
    model = ColourModel()
    evaluate({"m": model}, "linear-seg", f"ade20k:{tmp_path}", tmp_path / "out", quiet=True,
             **dict(FAST, iterations=1, overlays=0))
    training = model.shapes[0]
    assert training == (4, 3, 24, 24)  # 2 images x 2 windows, one forward pass


def test_schedule_warms_up_then_decays_linearly_to_zero():
    assert _schedule(0, 40000) == pytest.approx(1e-6)
    assert _schedule(1500, 40000) == pytest.approx(1 - 1500 / 40000)
    assert _schedule(750, 40000) == pytest.approx((1 - 750 / 40000) * (0.5 + 0.5e-6))
    assert _schedule(39999, 40000) == pytest.approx(1 / 40000)


def test_batches_visit_every_window_once_per_epoch():
    batches = list(_batch_order(10, 4, 5, torch.Generator().manual_seed(0)))
    seen = torch.cat(batches)
    assert [len(b) for b in batches] == [4] * 5
    assert sorted(seen[:10].tolist()) == list(range(10))  # first epoch
    again = list(_batch_order(10, 4, 5, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


def test_a_trained_head_fits_separable_features():
    """One feature per class: the head learns the identity map, to a loss near 0."""
    store = FeatureStore()
    eye = torch.eye(3).repeat(4, 1)
    store.add([eye[:, None, None, :].expand(-1, 2, 2, -1)], eye.argmax(1)[:, None, None].expand(-1, 2, 2), (2, 2))
    head = train_head(LinearHead(3, 3), store, lambda out, y: torch.nn.functional.cross_entropy(out, y.long()),
                      ProbeProtocol(size=2, iterations=100, batch_size=6, lr=0.1), 0, torch.device("cpu"), "t")
    with torch.no_grad():
        logits = head([eye[:3, None, None, :]], (1, 1))
    assert torch.equal(logits.argmax(1).reshape(-1), torch.arange(3))


def test_train_splits_of_every_reader(tmp_path):
    _ade20k(tmp_path / "ade", {"training": 2, "validation": 1})
    assert len(open_segmentation(f"ade20k:{tmp_path / 'ade'}", "train")) == 2
    assert open_segmentation("scenes:length=3,size=32", "train").name == "scenes:length=3,size=32,seed=0[train]"
    assert open_segmentation("scenes:length=3", "train")[0].name.startswith("train_0_")
    # folder: the training split lives in train/{images,masks} under the same classes.txt
    (tmp_path / "f/images").mkdir(parents=True)
    (tmp_path / "f/classes.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match="train image folder not found: .*f/train/images"):
        open_segmentation(f"folder:{tmp_path / 'f'}", "train")
    for split in ("images", "masks"):
        (tmp_path / "f/train" / split).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "f/train/images/x.png")
    Image.fromarray(np.ones((4, 4), np.uint8)).save(tmp_path / "f/train/masks/x.png")
    assert open_segmentation(f"folder:{tmp_path / 'f'}", "train")[0].label.max() == 1


def test_resolutions_give_one_key_per_metric_and_size(tmp_path):
    _ade20k(tmp_path / "ADEChallengeData2016", {"training": 2, "validation": 1})
    model = ColourModel()
    report = evaluate({"m": model, "n": ColourModel()}, "linear-seg", f"ade20k:{tmp_path}", tmp_path / "out",
                      quiet=True, resolutions="24,16", **dict(FAST, crop=None, iterations=2, overlays=1))
    assert {"miou@24", "miou@16", "pixel_acc@24", "per_class_iou@16"} <= set(report["models"]["m"])
    assert {s[-2:] for s in model.shapes if s[-2] == s[-1]} == {(24, 24), (16, 16)}  # windows of each size
    md = (tmp_path / "out/report.md").read_text()
    rows = [line.split(" |")[0] for line in md.splitlines() if line.startswith("| miou") or line.startswith("| pixel")]
    assert rows == ["| miou@24", "| miou@16", "| pixel_acc@24", "| pixel_acc@16"]
    assert (tmp_path / "out/overlays/m@16").is_dir() and (tmp_path / "out/pca/m@24.png").is_file()


def test_zeroshot_seg_at_several_resolutions(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(COLOURS) + "\n")
    label = np.kron(np.arange(12).reshape(3, 4) % len(COLOURS), np.ones((16, 16), int))
    Image.fromarray(PALETTE[label]).save(root / "images/a.png")
    Image.fromarray(label.astype(np.uint8)).save(root / "masks/a.png")
    model = ColourModel()
    report = evaluate({"m": model}, "zeroshot-seg", f"folder:{root}", tmp_path / "out", quiet=True,
                      resolutions=(48, 96), window=64, stride=48, overlays=0)
    scores = report["models"]["m"]
    assert scores["miou@48"] == 100.0 and scores["miou@96"] > 95
    # at 96 the window is 96 (not the 64 given) and the stride keeps its 3/4 ratio: 96x128 -> x = 0, 32
    assert {s[-2:] for s in model.shapes if s[-2] == s[-1]} == {(48, 48), (96, 96)}
    assert report["options"]["resolutions"] == [48, 96] and report["options"]["short_side"] is None


@pytest.mark.parametrize("args,message", [
    (["--task", "linear-seg", "--resolutions", "224,abc"], "resolutions '224,abc' is invalid; expected a comma"),
    (["--task", "zeroshot-seg", "--resolutions", "64,64"], "resolutions '64,64' lists a resolution twice"),
    (["--task", "linear-seg", "--head", "dpt"], "option 'head' does not apply to task linear-seg"),
    (["--task", "knn", "--crop", "64"], "option 'crop' does not apply to task knn"),
    (["--task", "retrieval", "--resolutions", "64"], "option 'resolutions' does not apply to task retrieval"),
    (["--task", "depth", "--head", "conv"], "head 'conv' is unknown; expected one of linear, dpt"),
    (["--task", "depth", "--dpt-width", "64"], "dpt-width 64 applies to the dpt head only"),
    (["--task", "depth", "--head", "dpt", "--dpt-width", "12"], "dpt-width 12 is invalid"),
    (["--task", "linear-seg", "--crop", "64", "--resolutions", "64,128"], "crop 64 and resolutions 64,128 both set"),
    (["--task", "zeroshot-seg", "--short-side", "64", "--resolutions", "64"], "short-side 64 and resolutions 64"),
    (["--task", "linear-seg", "--lr", "-1"], "lr -1.0 is invalid; expected a positive number"),
    (["--task", "linear-seg", "--iterations", "0"], "iterations 0 is invalid; expected a positive integer"),
    (["--task", "knn", "--temperature", "0"], "temperature 0.0 is invalid"),
])
def test_bad_dense_options_are_one_line_errors(tmp_path, capsys, args, message):
    code = main(["eval", "--model", "a=unused", "--dataset", "scenes:length=2", "--out", str(tmp_path), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_missing_train_split_is_a_one_line_error(tmp_path, capsys):
    _ade20k(tmp_path / "ADEChallengeData2016", {"validation": 1})
    code = main(["eval", "--model", "a=unused", "--task", "linear-seg", "--dataset", f"ade20k:{tmp_path}",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ") and "no images/training under it" in err


def test_probe_options_take_the_dataset_protocol():
    opts = ProbeOptions(lr=0.5)
    runs = opts.runs(ProbeProtocol(size=64, iterations=7, batch_size=3, lr=0.1))
    assert runs == [(None, ProbeProtocol(size=64, iterations=7, batch_size=3, lr=0.5))]
    assert (opts.crop, opts.iterations, opts.batch_size) == (64, 7, 3)
    sizes = ProbeOptions(resolutions=[32, 48]).runs(ProbeProtocol())
    assert [(r, p.size, p.iterations) for r, p in sizes] == [(32, 32, 40000), (48, 48, 40000)]


def test_cli_linear_seg_teacher_and_student_on_scenes(tmp_path, tiny_tipsv2_dir, tiny_tokenizer, capsys):
    from students import build_student

    torch.manual_seed(1)
    build_student("tipsv2-nano", teacher_width=32, tokenizer=tiny_tokenizer, image_size=32).save(tmp_path / "s")
    code = main(["eval", "--model", f"teacher={tiny_tipsv2_dir}", "--model", f"student={tmp_path / 's'}",
                 "--task", "linear-seg", "--dataset", "scenes:length=4,size=32", "--iterations", "3",
                 "--resolutions", "32,48", "--out", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out/report.json").read_text())
    for scores in report["models"].values():
        assert 0 <= scores["miou@32"] <= 100 and 0 <= scores["pixel_acc@48"] <= 100
    assert report["dataset"] == "scenes:length=4,size=32,seed=0"
    assert "| miou@32 | " in capsys.readouterr().out
