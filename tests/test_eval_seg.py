"""Zero-shot segmentation: window coverage, the value trick, and a perfect model scoring 100 end to end."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eval_stubs import COLOURS, ColourModel

from distill.eval import evaluate
from distill.eval.dense import window_boxes
from distill.eval.zeroshot_seg import SegOptions, class_scores
from common.errors import UserError


@pytest.mark.parametrize("height,width,window,stride", [(100, 64, 48, 32), (45, 70, 64, 48), (30, 30, 48, 32)])
def test_windows_cover_every_pixel_within_bounds(height, width, window, stride):
    count = np.zeros((height, width), int)
    for y0, x0, y1, x1 in window_boxes(height, width, window, stride):
        assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width
        assert y1 - y0 == min(window, height) and x1 - x0 == min(window, width)
        count[y0:y1, x0:x1] += 1
    assert count.min() >= 1


def test_window_positions_by_hand():
    # 100 px, window 48, stride 32: starts 0, 32, then 52 (shifted back to end at the border)
    assert sorted({b[0] for b in window_boxes(100, 64, 48, 32)}) == [0, 32, 52]
    assert sorted({b[1] for b in window_boxes(100, 64, 48, 32)}) == [0, 16]
    assert window_boxes(30, 40, None, 10) == [(0, 0, 30, 40)]


def test_overlapping_windows_are_averaged_and_resized_to_the_patch_size():
    model = ColourModel(patch_size=8)
    image = torch.rand(3, 45, 70)
    text = F.normalize(torch.rand(4, 4), dim=-1)
    probs = class_scores(model, [image, torch.rand(3, 40, 40)], text, SegOptions(window=32, stride=24, batch_size=3))
    assert probs[0].shape == (4, 45, 70) and probs[1].shape == (4, 40, 40)
    # average of softmaxes: a distribution at every pixel, whatever the number of overlapping windows
    for p in probs:
        torch.testing.assert_close(p.sum(0), torch.ones(p.shape[1:]))
    # 45 = 32 + 13: the last row of windows is 32 high (shifted), none is padded; 40x40 windows are 32x32 too
    assert all(s[-2:] == (32, 32) for s in model.shapes)
    assert max(s[0] for s in model.shapes) <= 3
    model.shapes.clear()
    (whole,) = class_scores(model, [torch.rand(3, 45, 70)], text, SegOptions(window=None))
    assert model.shapes == [(1, 3, 48, 72)]  # whole image, resized up to multiples of 8
    assert whole.shape == (4, 6, 9)  # raw cosines on the patch grid, as the notebook's predict_whole


def test_stride_larger_than_window_is_refused():
    with pytest.raises(UserError, match="stride 64 is larger than the window 48"):
        SegOptions(window=48, stride=64)


def _scene_folder(root, count=3):
    """Solid colour 8 px blocks, 48x64 images, one ignored block per image."""
    root.mkdir()
    (root / "classes.txt").write_text("\n".join(COLOURS) + "\n")
    rng = np.random.default_rng(0)
    palette = np.array(list(COLOURS.values()), dtype=np.uint8)
    for i in range(count):
        label = np.kron(rng.integers(0, len(COLOURS), (6, 8)), np.ones((8, 8), int))
        (root / "images").mkdir(exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(palette[label]).save(root / "images" / f"scene{i}.png")
        mask = label.copy()
        mask[:8, :8] = 255
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"scene{i}.png")
    return root


@pytest.mark.parametrize("window", [None, 32])
def test_perfect_model_scores_100_and_writes_the_report(tmp_path, window):
    data = _scene_folder(tmp_path / "data")
    report = evaluate({"a": ColourModel(), "b": ColourModel()}, "zeroshot-seg", f"folder:{data}", tmp_path / "out",
                      short_side=48, window=window, stride=16, save_predictions=tmp_path / "pred", quiet=True)
    scores = report["models"]["a"]
    assert scores["miou"] == scores["pixel_acc"] == scores["object_pixel_acc"] == 100.0
    assert set(scores["per_class_iou"]) == set(COLOURS)
    assert report["baselines"]["majority_class"] in COLOURS
    assert 0 < report["baselines"]["majority_class_miou"] < report["baselines"]["per_image_majority_miou"] < 100
    assert json.loads((tmp_path / "out/report.json").read_text()) == report
    assert set(report) >= {"task", "dataset", "models", "baselines"} and report["task"] == "zeroshot-seg"
    md = (tmp_path / "out/report.md").read_text()
    assert "| metric | a | b |" in md and "| per_class_iou | a | b |" in md
    # two perfect models tie on every metric and every counted cost: only the measured speed may be bolded
    assert not any("**" in line for line in md.splitlines() if not line.startswith("| images/s"))
    for name in ("a", "b"):
        assert (tmp_path / f"out/pca/{name}.png").is_file()
        assert len(list((tmp_path / f"out/overlays/{name}").glob("*.png"))) == 3
        pred = np.asarray(Image.open(tmp_path / f"pred/{name}/scene1.png"))
        label = np.asarray(Image.open(data / "masks/scene1.png"))
        np.testing.assert_array_equal(pred[label != 255], label[label != 255])


def test_short_side_resize_then_upsample_to_the_label(tmp_path):
    data = _scene_folder(tmp_path / "data", count=1)
    # 48 -> 96 px (bicubic blurs the block borders a little), predicted at 96 px, resized back to the 48x64 label.
    report = evaluate({"m": ColourModel()}, "zeroshot-seg", f"folder:{data}", tmp_path / "out",
                      short_side=96, window=64, stride=48, quiet=True)
    assert report["models"]["m"]["miou"] > 95


def _manual_value_trick(vision, pixels):
    """MaskCLIP by hand: the normal forward's input to the last block, then proj(v(norm1(x))) without mixing."""
    hidden = vision(pixel_values=pixels, output_hidden_states=True).hidden_states
    x = hidden[-2]  # output of every block but the last (hidden[0] = embeddings)
    last = vision.encoder.layer[-1]
    x = x + last.layer_scale1(last.attention.o_proj(last.attention.v_proj(last.norm1(x))))
    x = x + last.layer_scale2(last.mlp(last.norm2(x)))
    return vision.layernorm(x)


def test_value_trick_changes_the_last_block_only():
    from transformers import Tipsv2VisionConfig, Tipsv2VisionModel

    from teachers.tipsv2_tokens import tipsv2_tokens

    torch.manual_seed(0)
    vision = Tipsv2VisionModel(Tipsv2VisionConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                                  mlp_ratio=4, patch_size=8, image_size=32)).eval()
    with torch.no_grad():
        for p in vision.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pixels = torch.rand(2, 3, 32, 40)
    outputs = {}

    def keep(i, mode):
        return lambda module, args, out: outputs.setdefault(mode, {}).__setitem__(i, out.clone())

    hooks = [layer.register_forward_hook(keep(i, mode)) for mode in ("plain",) for i, layer in enumerate(vision.encoder.layer)]
    with torch.inference_mode():
        plain = tipsv2_tokens(vision, pixels)
        for h in hooks:
            h.remove()
        hooks = [layer.register_forward_hook(keep(i, "trick")) for i, layer in enumerate(vision.encoder.layer[:-1])]
        trick = tipsv2_tokens(vision, pixels, value_trick=True)
        for h in hooks:
            h.remove()
        manual = _manual_value_trick(vision, pixels)
    for i in range(len(vision.encoder.layer) - 1):  # every block but the last: bit-identical
        torch.testing.assert_close(outputs["trick"][i], outputs["plain"][i], rtol=0, atol=0)
    seq = torch.cat([trick.cls[:, None], trick.registers, trick.patches.flatten(1, 2)], 1)
    torch.testing.assert_close(seq, manual, rtol=1e-5, atol=1e-5)  # CLS, register and patches alike
    assert not torch.allclose(trick.patches, plain.patches, atol=1e-3)
    assert not torch.allclose(trick.cls, plain.cls, atol=1e-3)


def test_loaded_teacher_applies_the_same_value_trick(tiny_tipsv2_dir):
    """What zero-shot segmentation actually calls: `load_teacher(...).encode_image(value_trick=True)`."""
    from transformers import Tipsv2Model

    from teachers import load_teacher

    teacher = load_teacher(str(tiny_tipsv2_dir))
    vision = Tipsv2Model.from_pretrained(tiny_tipsv2_dir).vision_model.eval()
    pixels = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        manual = _manual_value_trick(vision, pixels)[:, 1 + vision.config.num_register_tokens :]
        patches = teacher.encode_image(pixels, value_trick=True).patches
    torch.testing.assert_close(patches.flatten(1, 2), manual, rtol=1e-5, atol=1e-5)


def _notebook_slide(model, img, text, side, stride):
    """The official notebook's `predict_slide`, one window at a time, written out literally."""
    _, H, W = img.shape
    probs, counts = torch.zeros(len(text), H, W), torch.zeros(H, W)
    for i in range(max(H - side + stride - 1, 0) // stride + 1):
        for j in range(max(W - side + stride - 1, 0) // stride + 1):
            y2, x2 = min(i * stride + side, H), min(j * stride + side, W)
            y1, x1 = max(y2 - side, 0), max(x2 - side, 0)
            window = img[:, y1:y2, x1:x2]
            p = model.patch_size
            size = (-(-window.shape[1] // p) * p, -(-window.shape[2] // p) * p)
            if size != tuple(window.shape[1:]):
                window = F.interpolate(window[None], size=size, mode="bicubic", align_corners=False)[0]
            feats = F.normalize(model.encode_image(window[None]).patches[0], dim=-1)
            cos = torch.einsum("cd,hwd->chw", text, feats)
            cos = F.interpolate(cos[None], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0]
            probs[:, y1:y2, x1:x2] += cos.softmax(0)
            counts[y1:y2, x1:x2] += 1
    return probs / counts


def test_batched_windows_match_the_notebook_loop():
    from eval_stubs import RandomFeatureModel

    model = RandomFeatureModel()
    text = F.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    images = [torch.rand(3, 45, 70), torch.rand(3, 64, 40), torch.rand(3, 30, 30)]
    with torch.inference_mode():
        batched = class_scores(model, images, text, SegOptions(window=32, stride=24, batch_size=3))
        for image, probs in zip(images, batched):
            torch.testing.assert_close(probs, _notebook_slide(model, image, text, 32, 24), rtol=1e-5, atol=1e-6)


def test_whole_image_mode_matches_the_notebook():
    """The notebook's `predict_whole` + its scoring loop: cosine maps on the patch grid, straight to the label
    size (bilinear, no softmax), argmax; the image resized up to a patch multiple by bicubic, unclamped."""
    from eval_stubs import RandomFeatureModel

    from distill.eval.dense import upsample
    from distill.eval.seg_scoring import argmax_labels

    model = RandomFeatureModel()
    text = F.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    images = [torch.rand(3, 45, 70), torch.rand(3, 64, 40)]
    labels = [(90, 140), (64, 40)]
    with torch.inference_mode():
        scores = class_scores(model, images, text, SegOptions(window=None))
        for image, label, ours in zip(images, labels, scores):
            p = model.patch_size
            size = (-(-image.shape[1] // p) * p, -(-image.shape[2] // p) * p)
            resized = F.interpolate(image[None], size=size, mode="bicubic", align_corners=False)
            feats = F.normalize(model.encode_image(resized).patches[0], dim=-1)
            cos = torch.einsum("cd,hwd->chw", text, feats)
            expected = F.interpolate(cos[None], size=label, mode="bilinear", align_corners=False)[0].argmax(0)
            assert np.array_equal(argmax_labels(upsample(ours, label)), expected.numpy())


def test_overlays_draw_scene_classes_in_their_own_colours_with_a_legend():
    from distill.eval.readers.scenes import read_scenes
    from distill.eval.report import legend, overlay_panel

    scenes = read_scenes("length=1")
    sample = scenes[0]
    names = scenes.class_names
    red = names.index("red")
    pred = np.full_like(sample.label, red)
    panel = np.asarray(overlay_panel(sample.image, sample.label, pred, names, scenes.colours))
    # Three 64 px panels, enlarged 3x to 192 px, then the legend strip below.
    assert panel.shape[1] == 3 * 192 and panel.shape[0] > 192
    prediction = panel[:192:3, 2 * 192::3].astype(int)  # back to one pixel per label pixel
    rgb = np.asarray(sample.image.convert("RGB"), dtype=np.float32)
    expected = (0.45 * rgb + 0.55 * np.array([220, 40, 40], np.float32)).astype(int)  # "red" drawn red
    assert np.abs(prediction - expected).max() <= 1
    shown = set(np.unique(sample.label).tolist()) | {red}
    strip = panel[192:].reshape(-1, 3)
    swatches = {tuple(c) for c in np.unique(strip, axis=0).tolist()}
    assert {tuple(scenes.colours[k].tolist()) for k in shown} <= swatches  # one swatch per class shown
    assert not {tuple(scenes.colours[k].tolist()) for k in range(len(names)) if k not in shown} & swatches
    # Many entries wrap onto more rows instead of running off the strip.
    entries = [(f"class {i}", (i, i, i)) for i in range(40)]
    assert legend(200, entries).height > legend(200, entries[:2]).height


def test_class_embeddings_average_every_template_then_renormalise():
    """Each prompt embedding normalised, averaged over all the templates, renormalised: a stub text tower
    whose embedding depends on the template (and the class) shows a template left out or not normalised."""
    from distill.eval.prompts import TCL_TEMPLATES, class_embeddings

    names = ["cat", "traffic-light"]
    width = len(TCL_TEMPLATES) + len(names)
    where = {t.format(n): (i, c) for c, n in enumerate(["cat", "traffic light"]) for i, t in enumerate(TCL_TEMPLATES)}

    class PerTemplate:
        def encode_text(self, texts):
            out = torch.zeros(len(texts), width)
            for row, text in enumerate(texts):
                template, cls = where[text]
                out[row, template] = 1.0 + template  # unnormalised, of another length per template
                out[row, len(TCL_TEMPLATES) + cls] = 3.0
            return out

    got = class_embeddings(PerTemplate(), names, batch_size=4)  # chunks that cut across the classes
    for cls in range(len(names)):
        prompts = torch.zeros(len(TCL_TEMPLATES), width)
        for template in range(len(TCL_TEMPLATES)):
            prompts[template, template] = 1.0 + template
            prompts[template, len(TCL_TEMPLATES) + cls] = 3.0
        expected = F.normalize(F.normalize(prompts, dim=-1).mean(0), dim=-1)
        torch.testing.assert_close(got[cls], expected)
