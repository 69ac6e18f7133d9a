"""A TIPSv2 teacher over transformers' towers, whichever source (hub/dir, official .npz) built them."""
from __future__ import annotations

import torch
from transformers import Tipsv2TextModel, Tipsv2VisionModel

from teachers.base import Teacher
from teachers.fingerprint import canonical_config, fingerprint
from teachers.tipsv2_tokens import tipsv2_hidden_states, tipsv2_tokens
from teachers.tokenizer import TextTokenizer
from common.types import ImageTokens


class Tipsv2Teacher(Teacher):
    def __init__(self, vision: Tipsv2VisionModel, text: Tipsv2TextModel | None = None, tokenizer=None,
                 temperature: float | None = None):
        config = vision.config
        tensors = {f"vision.{k}": v for k, v in vision.state_dict().items()}
        architecture = {"family": "tipsv2", "vision": canonical_config(config), "temperature": temperature}
        if text is not None:
            tensors.update({f"text.{k}": v for k, v in text.state_dict().items()})
            architecture["text"] = canonical_config(text.config)
        super().__init__(
            width=config.hidden_size, patch_size=config.patch_size, image_size=config.image_size,
            num_registers=config.num_register_tokens, fingerprint=fingerprint(architecture, tensors),
            temperature=temperature, tokenizer=tokenizer if text is not None else None,
        )
        self.vision = vision
        self.text = text

    @property
    def has_text(self) -> bool:
        return self.text is not None and self.tokenizer is not None

    def drop_text(self) -> "Tipsv2Teacher":
        self.text, self.tokenizer = None, None
        return self

    @property
    def num_layers(self) -> int:
        return self.vision.config.num_hidden_layers

    def intermediate_layers(self, pixels: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        """pixels: RGB in [0,1] as for `encode_image`; the normalised token sequences (B, 1+R+N, D) after the
        given blocks (1-based), e.g. for a DPT head (`teachers.tipsv2_tokens.tipsv2_hidden_states`)."""
        self._check_pixels(pixels)
        with torch.inference_mode():
            states = tipsv2_hidden_states(self.vision, pixels.to(device=self.device, dtype=self.dtype), layers)
        return [state.clone() for state in states]

    def _image_tokens(self, pixels: torch.Tensor, value_trick: bool) -> ImageTokens:
        return tipsv2_tokens(self.vision, pixels, value_trick=value_trick)

    @property
    def text_tokenizer(self) -> TextTokenizer:
        # Padding is masked out of attention and of the mean pooling, so padding to the longest text gives the
        # same embeddings as TIPSv2's 64-token padding at a fraction of the cost (9 prompts x 150 classes on ADE).
        return TextTokenizer(self.tokenizer, self.text.config.max_position_embeddings)

    def _text_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.text(input_ids=tokens["input_ids"].to(self.device),
                        attention_mask=tokens["attention_mask"].to(self.device))
        return out.pooler_output
