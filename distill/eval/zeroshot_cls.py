"""Zero-shot classification on a folder-per-class image set (`ROOT/<class name>/<image>`).

Class names are the folder names (underscores read as spaces) in the 9 TCL templates; images are
embedded by their L2-normalised CLS1 token. Reports top-1 / top-5 accuracy in percent.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.datasets import ImageFolder
from tqdm.auto import tqdm

from distill.eval.inputs import DECODE_ERRORS, Batches, Unusable, square_crop, square_side
from distill.eval.metrics import topk_accuracy
from distill.eval.prompts import TCL_TEMPLATES, class_embeddings
from distill.eval.task import ModelLoader, TaskResult, check_positive, require_text
from common.errors import UserError

KS = (1, 5)


@dataclass
class ClsOptions:
    resolution: int | None = None  # square input side; None: the model's native image size
    templates: tuple[str, ...] = TCL_TEMPLATES
    batch_size: int = 32
    limit: int | None = None
    workers: int = 0

    def __post_init__(self):
        check_positive(self, "resolution", "batch_size", "limit")


def open_class_folders(dataset: str) -> ImageFolder:
    kind, sep, rest = str(dataset).partition(":")
    path = Path(rest if sep and kind == "folder" else dataset).expanduser()
    if not path.is_dir():
        raise UserError(f"class-folder dataset not found: {path}; expected folder:PATH with one sub-folder per class")
    try:
        return ImageFolder(str(path), loader=str)  # paths; images open in `prepare_item`
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"{path} is not a folder-per-class image set ({str(exc).splitlines()[0]})") from None


def prepare_item(resolution: int, item: tuple[str, int]) -> tuple[torch.Tensor, int] | Unusable:
    path, target = item
    try:
        with Image.open(path) as image:
            return square_crop(image.convert("RGB"), resolution), target
    except DECODE_ERRORS as exc:
        return Unusable(path, type(exc).__name__)


@torch.inference_mode()
def evaluate_model(model, name: str, folders: ImageFolder, opts: ClsOptions, device: torch.device
                   ) -> tuple[dict, dict]:
    """(top-k accuracies, what was scored and skipped)."""
    require_text(model, name, "zero-shot classification")
    text = class_embeddings(model, folders.classes, opts.templates).to(device)
    resolution = square_side(opts.resolution, model)
    logits, targets = [], []
    loader = Batches(folders, opts.batch_size, opts.limit, opts.workers, partial(prepare_item, resolution))
    for batch in tqdm(loader, desc=f"zeroshot-cls {name}", unit="batch"):
        image = F.normalize(model.encode_image(torch.stack([p for p, _ in batch]).to(device)).cls.float(), dim=-1)
        logits.append((image @ text.T).cpu())
        targets.extend(t for _, t in batch)
    acc = topk_accuracy(torch.cat(logits), torch.tensor(targets), KS)
    return {f"top{k}": v for k, v in acc.items()}, loader.counts()


def run(models: dict, dataset: str, out_dir: Path, opts: ClsOptions, load: ModelLoader) -> TaskResult:
    folders = open_class_folders(dataset)
    result = TaskResult(f"folder:{folders.root}")
    for name, spec in models.items():
        model, device = load(spec)
        result.models[name], result.counts = evaluate_model(model, name, folders, opts, device)
        load.measure(name, model, square_side(opts.resolution, model))
        del model  # free it before the next model loads
    n = len(folders.classes)
    result.baselines = {f"chance_top{k}": 100.0 * min(k, n) / n for k in KS}
    return result
