"""Other Hugging Face encoders: DINOv2 (with registers), CLIP, SigLIP/SigLIP2; a hub id or `save_pretrained` dir.

Tokens are mapped to `ImageTokens` so that patches live where the family's text embeddings live:
- DINOv2(-with-registers): final-norm [CLS, registers, patches]; no text tower.
- CLIP: every token through `post_layernorm` and `visual_projection` (MaskCLIP's dense features), so
  CLS equals the image embedding; text through `get_text_features`.
- SigLIP / SigLIP2: CLS is the attention-pooling head output (the image embedding), no registers,
  patches are the post-norm tokens; text through `get_text_features`. SigLIP2 (NaFlex) takes the
  image as a sequence of patches: patchified with its image processor's own function, unpadded.
Input normalisation comes from the directory's image processor (mean/std).
"""
from __future__ import annotations

import math

import torch
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

from teachers.base import Teacher
from common.errors import UserError
from teachers.fingerprint import canonical_config, fingerprint
from teachers.tipsv2_tokens import split_tokens
from teachers.tokenizer import TextTokenizer
from common.types import ImageTokens

_TEXT_FAMILIES = {"clip", "siglip", "siglip2"}
MODEL_TYPES = ("dinov2", "dinov2_with_registers", "clip", "clip_vision_model", "siglip", "siglip_vision_model",
               "siglip2", "siglip2_vision_model")


class HFEncoderTeacher(Teacher):
    def __init__(self, model, family: str, mean, std, tokenizer=None):
        config = model.config
        vision_config = getattr(config, "vision_config", config)
        projection = getattr(model, "visual_projection", None)
        has_text = family in _TEXT_FAMILIES and hasattr(model, "text_model")
        temperature = float(torch.exp(-model.logit_scale.detach())) if has_text else None
        super().__init__(
            width=projection.out_features if projection is not None else vision_config.hidden_size,
            patch_size=vision_config.patch_size, image_size=_native_size(vision_config),
            num_registers=getattr(vision_config, "num_register_tokens", 0),
            fingerprint=fingerprint({"family": config.model_type, "config": canonical_config(config)},
                                    model.state_dict()),
            temperature=temperature, tokenizer=tokenizer if has_text else None, mean=mean, std=std,
        )
        self.model = model
        self.family = family
        self._has_text = has_text
        self._max_length = config.text_config.max_position_embeddings if has_text else None

    @property
    def has_text(self) -> bool:
        return self._has_text

    def drop_text(self) -> "HFEncoderTeacher":
        if self._has_text:  # CLIP/SigLIP: the image path reads neither
            self.model.text_model = None
            if hasattr(self.model, "text_projection"):  # CLIP's; SigLIP has none
                self.model.text_projection = None
            self._has_text, self.tokenizer = False, None
        return self

    def _image_tokens(self, pixels: torch.Tensor, value_trick: bool) -> ImageTokens:
        if value_trick:
            raise UserError(f"value_trick is not supported for {self.family} teachers; "
                            f"expected a TIPSv2 (transformers, .npz) or timm teacher")
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        if self.family == "dinov2":
            sequence = self.model(pixel_values=pixels).last_hidden_state
            return split_tokens(sequence, self.num_registers, grid)
        vision = getattr(self.model, "vision_model", self.model)  # full model or vision-only model
        if self.family == "siglip2":
            out = vision(**_naflex_inputs(pixels, self.patch_size))
        else:
            out = vision(pixel_values=pixels, interpolate_pos_encoding=True)
        if self.family in ("siglip", "siglip2"):
            b, _, d = out.last_hidden_state.shape
            return ImageTokens(out.pooler_output, out.last_hidden_state.new_zeros(b, 0, d),
                               out.last_hidden_state.reshape(b, *grid, d))
        sequence = vision.post_layernorm(out.last_hidden_state)  # CLIP leaves it to the pooled CLS only
        projection = getattr(self.model, "visual_projection", None)
        if projection is not None:
            sequence = projection(sequence)
        return split_tokens(sequence, 0, grid)

    @property
    def text_tokenizer(self) -> TextTokenizer:
        return TextTokenizer(self.tokenizer, self._max_length, pad_to_max_length=True)

    def _text_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return self.model.get_text_features(**batch).pooler_output


def _native_size(vision_config) -> int:
    if hasattr(vision_config, "image_size"):
        return vision_config.image_size
    return math.isqrt(vision_config.num_patches) * vision_config.patch_size  # SigLIP2: a patch budget


def _naflex_inputs(pixels: torch.Tensor, patch: int) -> dict:
    b, _, h, w = pixels.shape
    patches = torch.stack([convert_image_to_patches(image, patch) for image in pixels])
    return dict(pixel_values=patches,
                pixel_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long, device=pixels.device),
                spatial_shapes=torch.tensor([[h // patch, w // patch]] * b, device=pixels.device))


def load(name_or_dir: str, config, *, trust_remote_code: bool = False, revision: str | None = None,
         tokenizer: str | None = None) -> HFEncoderTeacher:
    if config.model_type not in MODEL_TYPES:
        raise UserError(f"{name_or_dir}: model type {config.model_type!r} is not supported; expected one of "
                        f"{', '.join(MODEL_TYPES)} (or tipsv2)")
    family = config.model_type.removesuffix("_vision_model").removesuffix("_with_registers")
    kwargs = dict(trust_remote_code=trust_remote_code, revision=revision)
    model = AutoModel.from_pretrained(name_or_dir, **kwargs)
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_dir, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"{name_or_dir}: no image processor ({err}); expected preprocessor_config.json "
                        f"saved with save_pretrained (it holds the input mean/std)") from None
    mean, std = (processor.image_mean, processor.image_std) if processor.do_normalize else (None, None)
    text_tokenizer = None
    if family in _TEXT_FAMILIES and hasattr(model, "text_model"):
        try:
            text_tokenizer = AutoTokenizer.from_pretrained(tokenizer or name_or_dir, **kwargs)
        except (OSError, ValueError) as err:
            raise UserError(f"no tokenizer could be loaded from {tokenizer or name_or_dir} ({err}); "
                            f"expected tokenizer files saved with save_pretrained, or pass tokenizer=PATH") from None
    return HFEncoderTeacher(model, family, mean, std, text_tokenizer)
