"""Where patch-text alignment fails, class by class: for each model, on validation scenes, the mean cosine between
the patch tokens of each labelled class and each class's text embedding (the alignment matrix), the zero-shot
confusion of those patches (row-normalised), and the cosines between the class text embeddings themselves.

A class can fail zero-shot segmentation because its text embedding is close to another class's (the text side),
because its patches do not point at its text embedding (the image side), or because another class's text embedding
is closer to them (confusion). The three matrices tell them apart. Patches are scored at the patch grid, with the
MaskCLIP value trick as in zero-shot segmentation, and only patches whose pixels all carry one class count.

Usage: python bench/alignment.py --model teacher=micro --model student=RUN/student@teacher [--limit 256]
                                 [--out bench/results/alignment.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF

from distill.data.scenes import SCENE_CLASSES, SceneDataset
from distill.eval.models import load_model, parse_model_args
from distill.eval.prompts import TCL_TEMPLATES, class_embeddings
from lab import emit


def pure_patch_labels(mask: np.ndarray, patch: int) -> np.ndarray:
    """(h, w) class per patch, -1 where the patch's pixels carry more than one class."""
    h, w = mask.shape[0] // patch, mask.shape[1] // patch
    blocks = mask[: h * patch, : w * patch].reshape(h, patch, w, patch).transpose(0, 2, 1, 3).reshape(h, w, -1)
    pure = (blocks == blocks[..., :1]).all(-1)
    return np.where(pure, blocks[..., 0], -1)


@torch.inference_mode()
def alignment(model, scenes: SceneDataset) -> dict:
    classes = len(SCENE_CLASSES)
    text = class_embeddings(model, list(SCENE_CLASSES), TCL_TEMPLATES).float()
    cos_sum, counts, confusion = np.zeros((classes, classes)), np.zeros(classes), np.zeros((classes, classes))
    for index in range(len(scenes)):
        scene = scenes.scene(index)
        pixels = TF.to_tensor(scene.image)[None]
        patches = F.normalize(model.encode_image(pixels, value_trick=True).patches[0].float(), dim=-1)
        labels = torch.from_numpy(pure_patch_labels(scene.mask.astype(np.int64), model.patch_size)).reshape(-1)
        cosines = (patches.reshape(-1, patches.shape[-1]) @ text.T)[labels >= 0]
        labels = labels[labels >= 0].numpy()
        np.add.at(cos_sum, labels, cosines.numpy())
        np.add.at(counts, labels, 1)
        np.add.at(confusion, (labels, cosines.argmax(1).numpy()), 1)
    rows = np.maximum(counts, 1)[:, None]
    return {"patches_per_class": counts.astype(int).tolist(),
            "patch_text_cosine": (cos_sum / rows).round(4).tolist(),
            "confusion": (confusion / rows).round(4).tolist(),
            "text_text_cosine": (text @ text.T).numpy().round(4).tolist(),
            "patch_accuracy_per_class": dict(zip(SCENE_CLASSES, np.diag(confusion / rows).round(4).tolist()))}


def markdown(result: dict) -> str:
    lines = []
    for name, a in result["models"].items():
        for key in ("patch_text_cosine", "confusion", "text_text_cosine"):
            lines += [f"### {name}: {key} (rows: {'patch class' if key != 'text_text_cosine' else 'text'}, "
                      "columns: text class)", "", "| | " + " | ".join(SCENE_CLASSES) + " |",
                      "|---" * (len(SCENE_CLASSES) + 1) + "|"]
            lines += [f"| {c} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for c, row in zip(SCENE_CLASSES, a[key])]
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=SPEC")
    parser.add_argument("--limit", type=int, default=256, help="validation scenes")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, help="write JSON here and the markdown tables beside it")
    args = parser.parse_args(argv)
    scenes = SceneDataset("validation", size=args.size, length=args.limit)
    result = {"setup": {"scenes": f"validation, {args.limit} scenes at {args.size} px", "classes": list(SCENE_CLASSES),
                        "templates": len(TCL_TEMPLATES)},
              "models": {name: alignment(load_model(spec), scenes) for name, spec in parse_model_args(args.model).items()}}
    emit(result, args.out)
    if args.out:
        args.out.with_suffix(".md").write_text(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
