"""Retrieval, zero-shot classification, fidelity, and the CLI on real tiny TIPSv2 teachers and students."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_stubs import COLOURS, ColourModel
from PIL import Image

from distill.cli import main
from distill.eval import evaluate


@pytest.fixture(scope="module")
def student_dirs(tmp_path_factory, tiny_tokenizer):
    """A nano student (same shapes as the tiny teacher, with text) and a text-less micro student whose
    96-wide tokens reach the teacher's 32 through projection heads, plus one without heads."""
    from students import build_student

    root = tmp_path_factory.mktemp("students")
    torch.manual_seed(1)
    build_student("tipsv2-nano", teacher_width=32, tokenizer=tiny_tokenizer).save(root / "nano")
    build_student("tipsv2-micro", teacher_width=32, text=False, image_size=32).save(root / "micro")
    build_student("tipsv2-micro", text=False, image_size=32).save(root / "headless")
    return root


def test_cli_teacher_vs_student_zeroshot_seg_on_scenes(tmp_path, tiny_tipsv2_dir, student_dirs, capsys):
    code = main(["eval", "--model", f"teacher={tiny_tipsv2_dir}", "--model", f"student={student_dirs / 'nano'}",
                 "--task", "zeroshot-seg", "--dataset", "scenes:length=4", "--out", str(tmp_path / "out"),
                 "--short-side", "64", "--window", "32", "--stride", "24", "--batch-size", "4",
                 "--save-predictions", str(tmp_path / "pred")])
    assert code == 0
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["task"] == "zeroshot-seg" and report["dataset"].startswith("scenes:length=4")
    assert set(report["models"]) == {"teacher", "student"}
    for scores in report["models"].values():
        assert {"miou", "pixel_acc", "things_miou", "things_pixel_acc", "per_class_iou"} <= set(scores)
        assert 0 <= scores["miou"] <= 100
    assert {"majority_class_miou", "per_image_majority_miou", "chance_things_pixel_acc"} <= set(report["baselines"])
    assert report["sources"]["student"]["spec"] == str(student_dirs / "nano")
    assert report["sources"]["teacher"]["fingerprint"] != report["sources"]["student"]["fingerprint"]
    assert report["baselines"]["chance_things_pixel_acc"] == pytest.approx(20.0)  # five colours
    assert "| metric | teacher | student |" in capsys.readouterr().out
    assert len(list((tmp_path / "pred/student").glob("*.png"))) == 4
    assert (tmp_path / "out/pca/teacher.png").is_file()


def test_retrieval_on_captioned_scenes(tmp_path, tiny_tipsv2_dir):
    report = evaluate({"teacher": str(tiny_tipsv2_dir)}, "retrieval", "scenes:length=12", tmp_path, quiet=True,
                      batch_size=5, image_token="register")
    scores = report["models"]["teacher"]
    assert set(scores) == {f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    for d in ("i2t", "t2i"):
        assert 0 <= scores[f"{d}_r1"] <= scores[f"{d}_r5"] <= scores[f"{d}_r10"] <= 100
    assert set(report["baselines"]) == {f"random_{k}" for k in scores}


def _colour_folder(root, per_colour: int = 3):
    """Solid colour images with sidecar captions naming their colour (several images share a caption)."""
    root.mkdir()
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for j in range(per_colour):
            noisy = np.clip(np.array(rgb) + np.random.default_rng(c * 10 + j).integers(-20, 20, (16, 16, 3)), 0, 255)
            Image.fromarray(noisy.astype(np.uint8)).save(root / f"{name}{j}.png")
            (root / f"{name}{j}.txt").write_text(f"a {name} thing")
    return root


def test_retrieval_with_an_oracle_model_recalls_everything(tmp_path):
    """ColourModel embeds an image by its colour and a caption by the colour it names: retrieval must be perfect,
    and would not be if image and text embeddings were paired in the wrong order."""
    data = _colour_folder(tmp_path / "data")
    report = evaluate({"oracle": ColourModel(image_size=16)}, "retrieval", f"folder:{data}", tmp_path / "out",
                      quiet=True, batch_size=5, caption_keys=("short",))
    assert report["models"]["oracle"] == {f"{d}_r{k}": 100.0 for d in ("i2t", "t2i") for k in (1, 5, 10)}
    assert report["baselines"]["random_t2i_r1"] < 100


def test_fidelity_equals_a_hand_computation(tmp_path):
    from eval_stubs import RandomFeatureModel

    from distill.eval.inputs import open_image_set, square_crop

    teacher, student = RandomFeatureModel(seed=0), RandomFeatureModel(seed=1)
    report = evaluate({"t": teacher, "s": student}, "fidelity", "scenes:length=5", tmp_path, quiet=True,
                      batch_size=2, resolution=32)
    images = open_image_set("scenes:length=5")
    pixels = torch.stack([square_crop(images[i].image, 32) for i in range(5)])
    with torch.no_grad():
        a, b = student.encode_image(pixels), teacher.encode_image(pixels)
    x, y = a.patches.reshape(-1, 16).double(), b.patches.reshape(-1, 16).double()
    xc, yc = x - x.mean(0), y - y.mean(0)
    cka = (torch.linalg.norm(xc.T @ yc) ** 2 / (torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc))).item()
    expected = {"cls_cosine": F.cosine_similarity(a.cls, b.cls, dim=-1).mean().item(),
                "register_cosine": F.cosine_similarity(a.registers, b.registers, dim=-1).mean().item(),
                "patch_cosine": F.cosine_similarity(a.patches, b.patches, dim=-1).mean().item(), "patch_cka": cka}
    assert report["models"]["s"] == pytest.approx(expected, rel=1e-5)


def test_cli_numbers_equal_the_python_api(tmp_path, tiny_tipsv2_dir, capsys):
    options = dict(short_side=64, window=32, stride=24, batch_size=4, overlays=0)
    assert main(["eval", "--model", f"t={tiny_tipsv2_dir}", "--task", "zeroshot-seg", "--dataset", "scenes:length=4",
                 "--out", str(tmp_path / "cli"), "--short-side", "64", "--window", "32", "--stride", "24",
                 "--batch-size", "4", "--overlays", "0"]) == 0
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    api = evaluate({"t": str(tiny_tipsv2_dir)}, "zeroshot-seg", "scenes:length=4", tmp_path / "api", quiet=True,
                   **options)
    assert cli["models"] == api["models"] and cli["baselines"] == api["baselines"]


def test_zeroshot_cls_on_class_folders(tmp_path):
    for i, (name, rgb) in enumerate(COLOURS.items()):
        (tmp_path / "data" / name).mkdir(parents=True)
        for j in range(2):
            noisy = np.clip(np.array(rgb) + np.random.default_rng(i * 2 + j).integers(-20, 20, (16, 16, 3)), 0, 255)
            Image.fromarray(noisy.astype(np.uint8)).save(tmp_path / "data" / name / f"{j}.png")
    report = evaluate({"oracle": ColourModel(image_size=8)}, "zeroshot-cls", f"folder:{tmp_path / 'data'}",
                      tmp_path / "out", quiet=True, batch_size=3)
    assert report["models"]["oracle"] == {"top1": 100.0, "top5": 100.0}
    assert report["baselines"] == {"chance_top1": 25.0, "chance_top5": 100.0}


def test_fidelity_identical_models_and_resized_grids(tmp_path):
    report = evaluate({"ref": ColourModel(patch_size=2, image_size=16), "same": ColourModel(patch_size=2),
                       "coarse": ColourModel(patch_size=4)}, "fidelity", "scenes:length=6", tmp_path, quiet=True,
                      batch_size=4)
    same, coarse = report["models"]["same"], report["models"]["coarse"]
    assert same["cls_cosine"] == pytest.approx(1.0) and same["patch_cosine"] == pytest.approx(1.0)
    assert same["patch_cka"] == pytest.approx(1.0)
    assert 0.8 < coarse["patch_cosine"] < 1.0  # 4x4 grid resized to the reference's 8x8
    assert report["baselines"]["reference"] == "ref"


def test_fidelity_projects_a_student_checkpoint_to_the_teacher_width(tmp_path, tiny_tipsv2_dir, student_dirs, capsys):
    code = main(["eval", "--model", f"student={student_dirs / 'micro'}", "--model", f"teacher={tiny_tipsv2_dir}",
                 "--task", "fidelity", "--reference", "teacher", "--dataset", "scenes:length=4",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    scores = json.loads((tmp_path / "out/report.json").read_text())["models"]["student"]
    assert set(scores) == {"cls_cosine", "register_cosine", "patch_cosine", "patch_cka"}
    assert all(-1 <= scores[k] <= 1 for k in ("cls_cosine", "register_cosine", "patch_cosine"))
    capsys.readouterr()
    code = main(["eval", "--model", f"teacher={tiny_tipsv2_dir}", "--model", f"s={student_dirs / 'headless'}",
                 "--task", "fidelity", "--dataset", "scenes:length=2", "--out", str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: student tipsv2-micro has no projection heads")


@pytest.mark.parametrize("args,message", [
    (["--task", "zeroshot-seg", "--limit", "0"], "limit 0 is invalid; expected a positive integer"),
    (["--task", "zeroshot-seg", "--window", "32", "--stride", "64"], "stride 64 is larger than the window 32"),
    (["--task", "retrieval", "--batch-size", "-1"], "batch-size -1 is invalid"),
    (["--task", "fidelity", "--reference", "nobody"], "reference model 'nobody' is not among the models"),
    (["--task", "zeroshot-seg", "--device", "tpu:x"], "device 'tpu:x' is not understood"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, args, message):
    code = main(["eval", "--model", "a=unused", "--model", "b=unused", "--dataset", "scenes:length=2",
                 "--out", str(tmp_path), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"error: {err[7:]}" and message in err and len(err.splitlines()) == 1


def test_unknown_option_for_a_task(tmp_path):
    from common.errors import UserError

    with pytest.raises(UserError, match="option 'window' does not apply to task retrieval"):
        evaluate({"m": ColourModel()}, "retrieval", "scenes:length=2", tmp_path, window=32)


def test_model_arguments():
    from distill.eval.models import parse_model_args
    from common.errors import UserError

    assert parse_model_args(["teacher=google/tipsv2-g14", "runs/x/last", "timm:vit_b,checkpoint=/w.pt"]) == {
        "teacher": "google/tipsv2-g14", "last": "runs/x/last", "timm:vit_b": "timm:vit_b,checkpoint=/w.pt"}
    with pytest.raises(UserError, match="model name 'a' is given twice"):
        parse_model_args(["a=x", "a=y"])


def test_broken_images_are_skipped_and_counted_never_replaced(tmp_path):
    """Training replaces a broken image by the next one; evaluation would then score that one twice."""
    data = _colour_folder(tmp_path / "data")
    (data / "broken.png").write_bytes(b"\x89PNG not really")
    (data / "broken.txt").write_text("a red thing")
    report = evaluate({"oracle": ColourModel(image_size=16)}, "retrieval", f"folder:{data}", tmp_path / "out",
                      quiet=True, batch_size=5, caption_keys=("short",))
    counts = report["counts"]
    assert counts["images_scored"] == 12 and counts["images_skipped"] == 1
    assert counts["skipped_reasons"] == {"unreadable": 1} and counts["skipped_examples"][0].endswith("broken.png")
    assert counts["texts_scored"] == 4
    assert report["models"]["oracle"]["i2t_r1"] == 100.0


def test_image_set_options_reach_the_source(tmp_path, capsys):
    data = _colour_folder(tmp_path / "data")
    lines = [json.dumps({"file_name": p.name, "short": p.read_text()}) for p in sorted(data.glob("*.txt"))[:6]]
    (data / "six.jsonl").write_text("\n".join(line.replace(".txt", ".png") for line in lines) + "\n")
    assert main(["eval", "--model", "m=unused", "--task", "retrieval", "--dataset", f"folder:{data}",
                 "--data-option", "index=six.jsonl", "--out", str(tmp_path / "out")]) == 2  # the model, not the option
    assert "unused" in capsys.readouterr().err
    report = evaluate({"oracle": ColourModel(image_size=16)}, "retrieval", f"folder:{data}", tmp_path / "out2",
                      quiet=True, data_options={"index": "six.jsonl"}, caption_keys=("short",))
    assert report["counts"]["images_scored"] == 6
    assert main(["eval", "--model", "m=unused", "--task", "zeroshot-seg", "--dataset", "scenes",
                 "--data-option", "split=test", "--out", str(tmp_path / "out3")]) == 2
    assert "data_options" in capsys.readouterr().err
