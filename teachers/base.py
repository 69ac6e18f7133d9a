"""The `Teacher` contract: a frozen encoder that takes RGB in [0,1] and returns `ImageTokens`.

Subclasses (one per source in `teachers/sources/`) implement `_image_tokens` on already-normalised
pixels and, when they have a text tower, `text_tokenizer` and `_text_embeddings` on its tokens (so a training
run can tokenise in its data workers). This base class owns what must be the
same for every source: input validation, the teacher's own normalisation, inference mode, freezing
and the metadata the caches and reports key on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from common.types import ImageTokens
from teachers.tokenizer import TextTokenizer

# Bicubic resizing (the official TIPS evaluation resizes that way, unclamped) overshoots [0,1] by up to about
# 0.15 at sharp edges. The range check is there to catch wrongly scaled input (0-255, mean/std-normalised).
PIXEL_OVERSHOOT = 0.25


class Teacher(nn.Module):
    """Frozen image(-text) encoder.

    width: token width D; patch_size; image_size: native resolution (square side, pixels);
    num_registers: R (register / second-CLS tokens); fingerprint: sha256 of architecture + weights
    (`teachers.fingerprint`); temperature: contrastive logit temperature (logits = cos / T) or None;
    tokenizer: the text tower's tokenizer or None. `has_text` is True when `encode_text` works.
    """

    def __init__(self, *, width: int, patch_size: int, image_size: int, num_registers: int, fingerprint: str,
                 temperature: float | None = None, tokenizer=None,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
        super().__init__()
        self.width = width
        self.patch_size = patch_size
        self.image_size = image_size
        self.num_registers = num_registers
        self.fingerprint = fingerprint
        self.temperature = temperature
        self.tokenizer = tokenizer
        # TIPSv2 consumes [0,1] RGB as is; other encoders bring their processor's mean/std.
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @property
    def has_text(self) -> bool:
        return False

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def freeze(self) -> "Teacher":
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Teacher":
        # A teacher never leaves eval mode, even when a parent module is switched to training.
        return super().train(False)

    def drop_text(self) -> "Teacher":
        """Free the text tower (of a teacher whose text nothing reads: a set's teachers after the first); the image
        path and the fingerprint of what was loaded are unchanged. Teachers with a text tower override it."""
        return self

    def encode_image(self, pixels: torch.Tensor, value_trick: bool = False) -> ImageTokens:
        """pixels: RGB in [0,1], (B,3,H,W), H and W multiples of `patch_size`.

        The forward runs under inference mode; the outputs are cloned out of it, because inference
        tensors cannot be saved for backward and these are the targets of a student's loss.
        """
        self._check_pixels(pixels)
        with torch.inference_mode():
            x = pixels.to(device=self.device, dtype=self.dtype)
            if self.normalize:
                x = (x - self.mean) / self.std
            tokens = self._image_tokens(x, value_trick)
        return tokens.map(torch.clone)

    @property
    def text_tokenizer(self) -> TextTokenizer:
        """How the text tower's input is made from texts: `encode_text` is `encode_text_tokens` of its output."""
        raise NotImplementedError

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (B, width), as plain (not inference-mode) tensors."""
        self._require_text()
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise UserError("encode_text expects a list of strings")
        return self.encode_text_tokens(self.text_tokenizer(list(texts)))

    def encode_text_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """`encode_text` of texts that `text_tokenizer` already tokenised (a training run does it in its data
        workers)."""
        self._require_text()
        with torch.inference_mode():
            embeddings = F.normalize(self._text_embeddings(tokens), dim=-1)
        return embeddings.clone()

    def _require_text(self) -> None:
        if not self.has_text:
            raise UserError(f"this teacher ({type(self).__name__}) has no text tower; "
                            f"expected a teacher with text (TIPSv2, CLIP, SigLIP) for encode_text")

    def _check_pixels(self, pixels) -> None:
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3:
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise UserError(f"pixels have shape {shape}; expected an RGB batch (B,3,H,W)")
        h, w = pixels.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise UserError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}; "
                            f"resize or crop to e.g. {self.image_size}x{self.image_size}")
        low, high = pixels.min().item(), pixels.max().item()
        if not (low >= -PIXEL_OVERSHOOT and high <= 1 + PIXEL_OVERSHOOT):  # also catches NaN
            raise UserError(f"pixels range over [{low:.4g}, {high:.4g}]; expected RGB in [0,1] "
                            f"(the teacher applies its own normalisation)")

    def _image_tokens(self, pixels: torch.Tensor, value_trick: bool) -> ImageTokens:
        raise NotImplementedError

    def _text_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError
