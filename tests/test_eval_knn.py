"""Weighted k-NN classification (DINO's eval_knn.py) on ROOT/train and ROOT/val class folders."""
import json
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_stubs import COLOURS, ColourModel
from PIL import Image

from distill.cli import main
from distill.eval import evaluate
from distill.eval.knn import knn_votes


def _class_folders(root, splits=("train", "val"), per_class=3):
    """Noisy solid colours; val images are copies of train images (a duplicate is its own nearest neighbour)."""
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for j in range(per_class):
            noisy = np.clip(np.array(rgb) + np.random.default_rng(c * 10 + j).integers(-20, 20, (16, 16, 3)), 0, 255)
            for split in splits:
                (root / split / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(noisy.astype(np.uint8)).save(root / split / name / f"{j}.png")
    return root


def test_votes_by_hand():
    train = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=-1)
    labels = torch.tensor([0, 1, 1])
    votes = knn_votes(train, labels, torch.tensor([[1.0, 0.0]]), k=2, temperature=0.5, num_classes=3)
    # neighbours: train 0 (cos 1, class 0) and train 1 (cos 0.8, class 1); train 2 (cos 0) is the third
    torch.testing.assert_close(votes, torch.tensor([[np.exp(2.0), np.exp(1.6), 0.0]], dtype=torch.float32))
    assert knn_votes(train, labels, train[:1], k=50, temperature=0.07, num_classes=3).shape == (1, 3)  # k > N


def test_duplicated_train_images_are_classified_exactly(tmp_path):
    root = _class_folders(tmp_path / "data")
    report = evaluate({"a": ColourModel(image_size=8), "b": ColourModel(image_size=8)}, "knn", f"folder:{root}",
                      tmp_path / "out", quiet=True, batch_size=5, resolutions=(8, 16))
    assert report["models"]["a"] == {"top1@8": 100.0, "top5@8": 100.0, "top1@16": 100.0, "top5@16": 100.0}
    assert report["baselines"] == {"chance_top1": 25.0, "chance_top5": 100.0}
    assert report["dataset"] == f"folder:{root}"
    assert json.loads((tmp_path / "out/report.json").read_text())["options"]["k"] == 20


def test_cli_knn_with_a_tipsv2_teacher(tmp_path, tiny_tipsv2_dir):
    root = _class_folders(tmp_path / "data", per_class=2)
    assert main(["eval", "--model", f"t={tiny_tipsv2_dir}", "--task", "knn", "--dataset", f"folder:{root}",
                 "--k", "3", "--out", str(tmp_path / "out")]) == 0
    scores = json.loads((tmp_path / "out/report.json").read_text())["models"]["t"]
    assert set(scores) == {"top1", "top5"} and 0 <= scores["top1"] <= scores["top5"] == 100.0  # 4 classes


@pytest.mark.parametrize("broken,message", [
    ("val", "not found: .*data/val; expected folder:PATH"),
    ("class", "have different class folders \\('green' is in only one\\)"),
])
def test_broken_class_folders_are_one_line_errors(tmp_path, capsys, broken, message):
    root = _class_folders(tmp_path / "data", per_class=1)
    shutil.rmtree(root / "val" if broken == "val" else root / "val" / "green")
    code = main(["eval", "--model", "a=unused", "--task", "knn", "--dataset", f"folder:{root}", "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and re.search(message, err)
