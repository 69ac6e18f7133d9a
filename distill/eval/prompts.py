"""Class-name prompts: the 9 TCL templates of the TIPSv2 zero-shot protocol, averaged per class."""
from __future__ import annotations

import torch
import torch.nn.functional as F

TCL_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "a photo of many {}.",
    "a photo of {}s.",
)


def prompt_name(name: str) -> str:
    """COCO-Stuff style names ('wall-brick', 'sky-other') read as words in a prompt."""
    for suffix in ("-other", "-stuff"):
        name = name.removesuffix(suffix)
    return name.replace("-", " ").replace("_", " ").strip()


@torch.inference_mode()
def class_embeddings(model, class_names: list[str], templates=TCL_TEMPLATES, batch_size: int = 256) -> torch.Tensor:
    """(C, D): each prompt embedding normalised, averaged over the templates, renormalised."""
    prompts = [t.format(prompt_name(name)) for name in class_names for t in templates]
    chunks = [model.encode_text(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    embeddings = F.normalize(torch.cat(chunks).float(), dim=-1)
    return F.normalize(embeddings.reshape(len(class_names), len(templates), -1).mean(1), dim=-1)
