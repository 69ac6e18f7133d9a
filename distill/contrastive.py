"""The caption contrastive term shared by distillation and pretraining (TIPS / TIPSv2).

CLS1 is contrasted with the web alt-text (`short`), CLS2 with the caption drawn for it (multi-granularity
captions); each over the global batch (InfoNCE or SigLIP's sigmoid loss, `distill.losses`). This module owns
what the term trains besides the student: the sigmoid bias, the projection of a frozen teacher text tower
(`text_tower: teacher`) and the temperature when the student has no text tower of its own. A student with a
text tower owns its temperature (it is exported with the model: logits = cosine / temperature).
"""
from __future__ import annotations

import torch
from torch import nn

from distill.config import ContrastiveConfig
from distill.data.captions import CaptionPair
from distill.losses.contrastive_loss import info_nce_loss
from distill.losses.global_batch import caption_ids, global_batch
from distill.losses.sigmoid_loss import sigmoid_loss
from common.types import ImageTokens

DEFAULT_TEMPERATURE = 0.07  # CLIP's initial temperature for a new text tower


def _initial_temperature(config: ContrastiveConfig, student) -> float:
    """Sigmoid: SigLIP's initial scale; otherwise the recipe's value, else a trained text tower's own
    (`student.init` / `text_init`), else CLIP's 0.07."""
    if config.kind == "sigmoid":
        return 1.0 / config.sigmoid_scale_init
    pretrained = student.temperature is not None and ("init" in student.metadata or "text_init" in student.metadata)
    if config.temperature_init is not None or not pretrained:
        return config.temperature_init or DEFAULT_TEMPERATURE
    return float(student.temperature.detach())


class CaptionContrastive(nn.Module):
    def __init__(self, config: ContrastiveConfig, student, teacher_text_width: int | None = None):
        super().__init__()
        self.config = config
        if config.text_tower == "teacher":
            self.text_projection = nn.Linear(teacher_text_width, student.width)
        if config.kind == "sigmoid":
            self.logit_bias = nn.Parameter(torch.tensor(float(config.sigmoid_bias_init)))
        initial = _initial_temperature(config, student)
        if student.temperature is not None:
            with torch.no_grad():
                student.temperature.fill_(initial)
        else:
            self.temperature = nn.Parameter(torch.tensor(float(initial)))

    def text_embeddings(self, student, captions: CaptionPair,
                        teacher_text: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS1 texts, CLS2 texts), unnormalised, at the student's width."""
        if self.config.text_tower == "teacher":
            return self.text_projection(teacher_text[0]), self.text_projection(teacher_text[1])
        # Both lists in one forward: the loader tokenised them to one width (`CaptionTokenizer(joint=True)`).
        ids, mask = (torch.cat([part[key] for part in captions.tokens]) for key in ("input_ids", "attention_mask"))
        device = student.vision.embeddings.cls_token.device
        return student.text_features(ids.to(device), mask.to(device)).chunk(2)

    def forward(self, student, tokens: ImageTokens, captions: CaptionPair,
                teacher_text: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean of the CLS1 and CLS2 losses, and detached parts for logging."""
        text1, text2 = self.text_embeddings(student, captions, teacher_text)
        device = text1.device
        temperature = student.temperature if student.temperature is not None else self.temperature
        losses = {}
        for name, image, text, strings, valid in (
            ("cls1", tokens.cls, text1, captions.cls1, captions.cls1_valid),
            ("cls2", tokens.registers[:, 0], text2, captions.cls2, captions.cls2_valid),
        ):
            batch = global_batch(image, text, caption_ids(strings, device), valid.to(device))
            losses[name] = (sigmoid_loss(batch, temperature, self.logit_bias) if self.config.kind == "sigmoid"
                            else info_nce_loss(batch, temperature))
        parts = {f"contrastive/{k}": v.detach() for k, v in losses.items()}
        parts["contrastive/temperature"] = temperature.detach().float()
        return (losses["cls1"] + losses["cls2"]) / 2, parts
